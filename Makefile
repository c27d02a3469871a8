# One command to set up and make a song, one to set up and run the tests (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROMPT ?= uplifting synthwave with a driving bassline and warm pads

.PHONY: setup run test test-data down bench clean

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` may pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[musicgen,test]'
	$(BIN)/python -c "from longsong.analysis.gate import warm_up; warm_up()"  # librosa's numba kernels, cached once
	touch $@

run: setup
	$(BIN)/longsong dev up
	$(BIN)/longsong generate "$(PROMPT)" --duration 180 --bpm 110 --key "A minor" \
		--section 0:intro --section 30:verse --section 84:chorus --section 138:bridge --wait --output out
	$(BIN)/longsong dev status  # ends with the listening page's URL and a working API key

test: setup test-data
	$(BIN)/python -m pytest -n 2  # two processes: most tests wait on servers, not on the CPU

# Ground truth for the analyzer and seam tests: real recorded loops of known tempo (sonic-pi-samples, CC0) and
# sampled real instruments rendering MIDI of known key and tempo (fluidsynth + the FluidR3 GM soundfont).
# chromium: the listening page's browser test; postgresql: the API database tests on the production engine.
TEST_PACKAGES := sonic-pi-samples fluidsynth fluid-soundfont-gm chromium postgresql
test-data:
	@dpkg -s $(TEST_PACKAGES) >/dev/null 2>&1 || { SUDO=$$(command -v sudo || true); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(TEST_PACKAGES); }

down:
	$(BIN)/longsong dev down

bench: setup
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/musicgen_speed.py --quick

clean: down
	rm -rf $(VENV) out
