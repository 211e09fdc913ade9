# crab-rt: the two commands of the README's quick start.
#   make test   create .venv, install crab-rt with dev extras, lint, run the whole test suite
#   make lint   ruff (configured in pyproject.toml)
#   make demo   synthesize a corpus, train a tiny Crab, evaluate, export a bundle, stream a conversation
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

demo: install
	$(BIN)/crab-rt synth --out $(DEMO)/synthetic --num 480 --seed 0 --conversation $(DEMO)/conversation.wav --quiet
	$(BIN)/crab-rt train --recipe synthetic --manifest $(DEMO)/synthetic/manifest.csv --out $(DEMO)/run --no-progress
	$(BIN)/crab-rt evaluate --checkpoint $(DEMO)/run/best.pt --manifest $(DEMO)/synthetic/manifest.csv --split test
	$(BIN)/python -m crab_rt.data.tiny_asr --out $(DEMO)/tiny-asr --quiet
	$(BIN)/crab-rt export --checkpoint $(DEMO)/run/best.pt --out $(DEMO)/bundle --asr $(DEMO)/tiny-asr
	$(BIN)/crab-rt listen --bundle $(DEMO)/bundle --input $(DEMO)/conversation.wav --format pretty
	@echo "ground truth of the synthetic conversation: $(DEMO)/conversation.json"

clean:
	rm -rf $(DEMO) .pytest_cache
