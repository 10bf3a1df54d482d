# The two commands of the README. Each creates its venv if needed and installs what it needs.
#   make demo   the demo study (six methods, tiny model, embedded corpus) ending in an HTML report; runs in
#               .venv-run, which holds the runtime dependencies only (what `pip install rankscope` gives)
#   make test   test dependencies (incl. headless Chromium) into .venv + the whole CPU test suite
#   make demo-scale  optional second demo: the demo study at two model sizes (smoke, tiny) and the report across sizes
#   make demo-guides  the guide study on CPU (GaLore and CoLA with sam and align, controls; ~15 min)
#   make smoke  the demo's command on the smoke preset (a few minutes) in .venv-run; fails if any job fails (CI)
#   make gpu-check  on a CUDA machine: every method in bf16, resume, analyze GPU vs CPU, DDP, MFU, memory (< 10 min)
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIP      := $(BIN)/pip install -q -c constraints.txt
RUN_VENV := .venv-run
RUN_BIN  := $(RUN_VENV)/bin
RUN_PIP  := $(RUN_BIN)/pip install -q -c constraints.txt
OUT      ?= study_out/demo
SCALE_OUT ?= study_out/multiscale
SMOKE_OUT ?= study_out/smoke
GUIDES_OUT ?= study_out/guides-demo
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo demo-scale demo-guides smoke test test-fast test-slow test-paper venv venv-test chromium bench gpu-check clean

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

# Runtime dependencies only (no test extra: no sklearn, datasets, transformers, lm_eval, submitit), so the
# demo proves that `pip install rankscope` is enough for the main job.
$(RUN_BIN)/python:
	$(PY) -m venv $(RUN_VENV)
	$(RUN_PIP) --upgrade pip
	$(RUN_PIP) torch==2.13.0

$(RUN_VENV)/.runtime: pyproject.toml constraints.txt | $(RUN_BIN)/python
	$(RUN_PIP) -e .
	touch $@

venv: $(RUN_VENV)/.runtime
venv-test: $(VENV)/.test

demo: $(RUN_VENV)/.runtime
	$(RUN_BIN)/rankscope study --preset demo --out $(OUT)

# The optional second demo: the demo study at two model sizes (smoke and tiny) and the report across sizes.
demo-scale: $(RUN_VENV)/.runtime
	$(RUN_BIN)/rankscope study --preset multiscale --out $(SCALE_OUT)

# The guide study (docs/guides.md "The guide study"): report section "Did guidance move low-rank toward full-rank?"
demo-guides: $(RUN_VENV)/.runtime
	$(RUN_BIN)/rankscope study --preset guides-demo --out $(GUIDES_OUT)

# The exit code is the proof (1 if any job failed); status.json is checked too, so a regression in the exit
# code cannot hide a failed job.
smoke: $(RUN_VENV)/.runtime
	$(RUN_BIN)/rankscope study --preset smoke --out $(SMOKE_OUT) --quiet
	$(RUN_BIN)/python scripts/check_study.py $(SMOKE_OUT)

# Debian's chromium for the report's browser check (root on CI machines; skipped with a warning elsewhere).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; browser tests will be skipped"

# Everything CI runs: lint, the default suite (~10 min), then the slow and browser tests, deliberately.
test: $(VENV)/.test chromium
	$(BIN)/ruff check -q .
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not browser"
	$(BIN)/python -m pytest -q -m "(slow or browser) and not gpu and not paper"

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.test chromium
	$(BIN)/python -m pytest -q -m "(slow or browser) and not gpu and not paper"

# Paper-size CPU checks too slow for CI (1b at full depth, SLTrain's 1b build): ~25 min on one thread.
test-paper: $(VENV)/.test
	$(BIN)/python -m pytest -q -m paper

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
	rm -rf $(VENV) $(RUN_VENV) study_out runs
