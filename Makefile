# All commands run inside the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

RUNS_DIR ?= runs
WORKERS  ?= 2
SCALE    ?= paper

.PHONY: setup test test-fast lint format demo bench sweep-plasticity sweep-plasticity-structured sweep-granet figures clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change, so `make setup` is cheap to repeat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check harness analysis tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format harness analysis tests benchmarks

# A CPU-sized GraNet run on MNIST-1D: about 40 s with 2 cores to itself, far longer when they are shared
# (README, "Threads, and why run times vary").
demo: $(STAMP)
	$(BIN)/harness run granet --arch resnet20 --dataset mnist1d --runs-dir $(RUNS_DIR)

bench: $(STAMP)
	$(BIN)/harness bench

# Every figure and table the runs under RUNS_DIR support, with an index.md, into FIGURES_DIR.
FIGURES_DIR ?= figures
figures: $(STAMP)
	$(BIN)/harness figures $(RUNS_DIR) --out $(FIGURES_DIR)

# Sweeps (sweeps/*.yaml, W&B's format) run locally by `harness sweep`: completed runs are skipped, so an
# interrupted sweep finishes what is missing when run again. SCALE=paper (CIFAR, GPU-sized) or SCALE=cpu
# (MNIST-1D, minutes on 2 cores); WORKERS runs in parallel; RUNS_DIR is the run store.
sweep-plasticity: $(STAMP)
	$(if $(filter-out paper cpu,$(SCALE)),$(error SCALE must be paper or cpu, not '$(SCALE)'))
	$(BIN)/harness sweep sweeps/$(if $(filter cpu,$(SCALE)),plasticity-mnist1d,plasticity).yaml \
		--workers $(WORKERS) --runs-dir $(RUNS_DIR)

sweep-plasticity-structured: $(STAMP)
	$(if $(filter-out paper cpu,$(SCALE)),$(error SCALE must be paper or cpu, not '$(SCALE)'))
	$(BIN)/harness sweep sweeps/plasticity-structured$(if $(filter cpu,$(SCALE)),-mnist1d).yaml \
		--workers $(WORKERS) --runs-dir $(RUNS_DIR)

# SCALE=paper runs the CIFAR-10 and then the CIFAR-100 comparison (the second even if the first had failures).
sweep-granet: $(STAMP)
	$(if $(filter-out paper cpu,$(SCALE)),$(error SCALE must be paper or cpu, not '$(SCALE)'))
	status=0; \
	for file in $(if $(filter cpu,$(SCALE)),granet-mnist1d,granet-cifar10 granet-cifar100); do \
		$(BIN)/harness sweep sweeps/$$file.yaml --workers $(WORKERS) --runs-dir $(RUNS_DIR) || status=$$?; \
	done; \
	exit $$status

clean:
	rm -rf .pytest_cache build *.egg-info
