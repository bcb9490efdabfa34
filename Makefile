# All commands run inside the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

RUNS_DIR ?= runs
WORKERS  ?= 2
SCALE    ?= auto
DATA_DIR ?= data

.PHONY: setup test test-fast lint format demo bench bench-training gpu-check bench-inference sweep-plasticity sweep-plasticity-structured sweep-granet figures reproduce-cpu sweep-collapse clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change, so `make setup` is cheap to repeat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Tests run in TEST_WORKERS processes (pytest-xdist; `auto`: one per CPU core; 1 for a plain run in one
# process). Each test keeps its own temporary directories and ports, so the split changes no outcome.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS))
test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check harness analysis tests benchmarks experiments examples

format: $(STAMP)
	$(BIN)/ruff format harness analysis tests benchmarks experiments examples

# A CPU-sized GraNet run on MNIST-1D: about 40 s with 2 cores to itself, far longer when they are shared
# (README, "Threads, and why run times vary").
demo: $(STAMP)
	$(BIN)/harness run granet --arch resnet20 --dataset mnist1d --runs-dir $(RUNS_DIR)

bench: $(STAMP)
	$(BIN)/harness bench step

# The README's training table (`harness bench training`): the torchvision vs the device-resident input pipeline
# and an eager vs channels_last vs compiled GraNet training step of ResNet-20 and VGG-19, side by side on
# this machine's device (CUDA if present, else the CPU). Writes benchmarks/training.json and
# benchmarks/training.md (a few minutes on 2 CPU cores, most of it compiling).
bench-training: $(STAMP)
	$(BIN)/harness bench training --json benchmarks/training.json --markdown benchmarks/training.md

# The GPU check (README, "GPU speed"): one JSON of ResNet-20 / CIFAR-10 epochs through the engine for each
# pipeline and step variant, the authors'-style loop, two runs on one GPU, bf16 and channels_last numerics,
# host syncs per step and the 160-epoch projection. Under 10 minutes on one H100-class GPU; without CUDA it
# says so for each part and writes the JSON with every part skipped.
GPU_CHECK_OUT ?= benchmarks/gpu-check.json
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) --data-dir $(DATA_DIR)

# The README's inference table: exported sparse vs dense PyTorch, VGG-19 and ResNet-20, CIFAR (32x32) and
# MNIST-1D (1x40) input shapes, 90/95/98% random ERK masks, and the trained masks of sweeps/inference-mnist1d.yaml
# (GraNet, RigL and GMP on ResNet-20, GraNet on VGG-19, at 95/98%; trained into RUNS_DIR first, completed runs
# skipped), batch 1 and 64, THREADS intra-op threads. Writes benchmarks/inference.json and
# benchmarks/inference.md (README, "Sparse inference": the wall time measured).
THREADS ?= 1
INFERENCE_SWEEP = $(BIN)/harness sweep run sweeps/inference-mnist1d.yaml --workers $(WORKERS) --runs-dir $(RUNS_DIR)
bench-inference: $(STAMP)
	$(INFERENCE_SWEEP) --only arch=resnet20
	$(INFERENCE_SWEEP) --only arch=vgg19 --only method=granet
	$(BIN)/harness bench inference --arch vgg19 --arch resnet20 --dataset cifar10 --dataset mnist1d \
		--sparsity 0.9 --sparsity 0.95 --sparsity 0.98 --batch-sizes 1,64 --threads $(THREADS) \
		$$(for run in $(RUNS_DIR)/inference-mnist1d/*/config.yaml; do \
			[ -f "$$run" ] && printf -- '--run %s ' "$${run%/config.yaml}"; done) \
		--json benchmarks/inference.json --markdown benchmarks/inference.md

# Every figure and table the runs under RUNS_DIR support, with an index.md, into FIGURES_DIR.
FIGURES_DIR ?= figures
figures: $(STAMP)
	$(BIN)/harness figures $(RUNS_DIR) --out $(FIGURES_DIR)

# Sweeps (sweeps/*.yaml, W&B's format) run locally by `harness sweep run`: completed runs are skipped, so an
# interrupted sweep finishes what is missing when run again. SCALE=paper (CIFAR, GPU-sized), SCALE=cpu
# (MNIST-1D, minutes on 2 cores) or SCALE=auto (the default): paper when nvidia-smi lists a GPU and CIFAR-10 is
# under DATA_DIR, cpu otherwise, said in one line with the reason. WORKERS runs in parallel; RUNS_DIR is the run
# store. Without the dataset SCALE=paper stops before starting anything (harness sweep run checks every run's
# data first) and names the CPU sweep to use instead.
# `=`, not `:=`: only the sweep targets pay for asking nvidia-smi.
AUTO_SCALE = $(shell if ! nvidia-smi -L >/dev/null 2>&1; then echo "cpu no GPU found (nvidia-smi lists none)"; \
	elif [ ! -d "$(DATA_DIR)/cifar-10-batches-py" ]; then echo "cpu no CIFAR-10 in $(DATA_DIR)/cifar-10-batches-py"; \
	else echo "paper a GPU and CIFAR-10 in $(DATA_DIR) found"; fi)
CHOSEN_SCALE = $(if $(filter auto,$(SCALE)),$(firstword $(AUTO_SCALE)),$(SCALE))
# The recipe's first line: refuses an unknown SCALE, and says what SCALE=auto chose and why.
CHOOSE_SCALE = $(if $(filter-out auto paper cpu,$(SCALE)),$(error SCALE must be auto, paper or cpu, not '$(SCALE)'))$(if \
	$(filter auto,$(SCALE)),$(info SCALE=auto: $(CHOSEN_SCALE) scale, $(wordlist 2,99,$(AUTO_SCALE)); choose with SCALE=paper or SCALE=cpu))
sweep-plasticity: $(STAMP)
	$(CHOOSE_SCALE)
	$(BIN)/harness sweep run sweeps/$(if $(filter cpu,$(CHOSEN_SCALE)),plasticity-mnist1d,plasticity).yaml \
		--workers $(WORKERS) --runs-dir $(RUNS_DIR)

sweep-plasticity-structured: $(STAMP)
	$(CHOOSE_SCALE)
	$(BIN)/harness sweep run sweeps/plasticity-structured$(if $(filter cpu,$(CHOSEN_SCALE)),-mnist1d).yaml \
		--workers $(WORKERS) --runs-dir $(RUNS_DIR)

# SCALE=paper runs the CIFAR-10 and then the CIFAR-100 comparison (the second even if the first had failures).
sweep-granet: $(STAMP)
	$(CHOOSE_SCALE)
	status=0; \
	for file in $(if $(filter cpu,$(CHOSEN_SCALE)),granet-mnist1d,granet-cifar10 granet-cifar100); do \
		$(BIN)/harness sweep run sweeps/$$file.yaml --workers $(WORKERS) --runs-dir $(RUNS_DIR) || status=$$?; \
	done; \
	exit $$status

# The whole CPU reproduction: every CPU run behind claims.md into RUNS_DIR (completed runs are skipped, so
# a second run takes seconds), then the figures, tables and claims.md into FIGURES_DIR. From the method
# comparison it runs what the paper's claims compare: GMP, RigL, SET and GraNet dense-to-sparse, and GraNet
# sparse-to-sparse (s_i = 0.5); `make sweep-granet SCALE=cpu` runs all 11 methods into the same store.
# W&B is off (REPRO_WANDB=offline mirrors every run, ~5 s more each); the mirror is not part of a run id.
# A failed sweep does not stop the others or the figures (they show what finished), but makes the exit
# status non-zero. The last line printed is the path of claims.md. Measured: README, "Reproducing the
# paper's claims on a CPU".
REPRO_WANDB ?= disabled
REPRO_SWEEP = $(BIN)/harness sweep run --workers $(WORKERS) --runs-dir $(RUNS_DIR) --wandb $(REPRO_WANDB)
CLAIM_COMPARISON := --only method=gmp --only method=rigl --only method=set --only method=granet --only init_sparsity=0.0
CLAIM_SPARSE_TO_SPARSE := --only method=granet --only init_sparsity=0.5
reproduce-cpu: $(STAMP)
	status=0; \
	$(REPRO_SWEEP) sweeps/plasticity-mnist1d.yaml || status=$$?; \
	$(REPRO_SWEEP) sweeps/plasticity-structured-mnist1d.yaml || status=$$?; \
	$(REPRO_SWEEP) sweeps/granet-mnist1d.yaml $(CLAIM_COMPARISON) || status=$$?; \
	$(REPRO_SWEEP) sweeps/granet-mnist1d.yaml $(CLAIM_SPARSE_TO_SPARSE) || status=$$?; \
	$(BIN)/harness figures $(RUNS_DIR) --out $(FIGURES_DIR) || exit $$?; \
	echo $(FIGURES_DIR)/claims.md; \
	exit $$status

# The high-sparsity collapse ablation (README, "The high-sparsity collapse"): 75 runs at 98%, ~1 hour on
# 2 CPU cores; `make figures` then adds collapse_ablation.png and collapse_table.md.
sweep-collapse: $(STAMP)
	$(BIN)/harness sweep run sweeps/collapse-mnist1d.yaml --workers $(WORKERS) --runs-dir $(RUNS_DIR)

clean:
	rm -rf .pytest_cache build *.egg-info
