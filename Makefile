# All commands run inside the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

RUNS_DIR ?= runs
WORKERS  ?= 2
SCALE    ?= paper

.PHONY: setup test test-fast lint format demo bench sweep-plasticity sweep-granet figures clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change, so `make setup` is cheap to repeat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
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

# A CPU-sized GraNet run on MNIST-1D: a couple of minutes on 2 cores.
demo: $(STAMP)
	$(BIN)/harness run granet --arch resnet20 --dataset mnist1d --runs-dir $(RUNS_DIR)

bench: $(STAMP)
	$(BIN)/harness bench

clean:
	rm -rf .pytest_cache build *.egg-info
