# The two commands of the README. Each creates .venv if needed and installs what it needs.
#   make demo   the demo study (six methods, tiny model, embedded corpus) ending in an HTML report
#   make test   test dependencies (incl. headless Chromium) + the whole CPU test suite
#   make gpu-check  on a CUDA machine: every method in bf16, resume, analyze GPU vs CPU, DDP, MFU, memory (< 10 min)
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIP      := $(BIN)/pip install -q -c constraints.txt
OUT      ?= study_out/demo
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast test-slow venv venv-test chromium bench gpu-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0

$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[test]'
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

demo: $(VENV)/.runtime
	$(BIN)/rankscope study --preset demo --out $(OUT)

# Debian's chromium for the report's browser check (root on CI machines; skipped with a warning elsewhere).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; browser tests will be skipped"

# Everything CI runs: lint, the default suite (~10 min), then the slow and browser tests, deliberately.
test: $(VENV)/.test chromium
	$(BIN)/ruff check -q .
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not browser"
	$(BIN)/python -m pytest -q -m "(slow or browser) and not gpu"

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.test chromium
	$(BIN)/python -m pytest -q -m "(slow or browser) and not gpu"

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_galore.py
	$(BIN)/python benchmarks/bench_spectra_cka.py
	$(BIN)/python benchmarks/bench_landscape.py

# One CUDA machine, unattended, < 10 min: writes $(GPU_OUT)/gpu_check.json and .md (exits 0 with one line without CUDA).
GPU_OUT ?= gpu_check
gpu-check: $(VENV)/.runtime
	$(BIN)/python scripts/gpu_check.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) study_out runs
