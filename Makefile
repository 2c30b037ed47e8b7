# genbench: `make run` (the default comparison) and `make test` bootstrap everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genbench-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
PYTEST_ARGS ?=
# pytest-xdist workers: tests are single-threaded (OMP_NUM_THREADS=1), so 2 workers use both cores; a module's tests
# stay on one worker (its fixtures, e.g. trained runs, are built once). TEST_WORKERS=0 runs everything in-process.
TEST_WORKERS ?= 2
# `make bench BENCH_ARGS=--tiny` for the seconds-long smoke run; genbench overrides too: BENCH_ARGS=hardware=gpu_bf16
BENCH_ARGS ?=
# The default report on a CPU: the DDIM step grid without its FID curve (figures/sampler_cost, about three minutes at
# report.cost_n=200 for the three families with a sampler, has FID against cost for every sampler, DDIM's included),
# and the sampler-cost curves at 4, 8 and 16 steps rather than 5, 10 and 20, so that all of `make run` fits in 15 min.
REPORT_ARGS ?= report.ddim_fid_n=0 'report.cost_steps=[4,8,16]'

# Every family genbench trains: the names of conf/model/*.yaml, comma-separated (as genbench.models.families()).
comma := ,
space := $(subst ,, )
FAMILIES := $(subst $(space),$(comma),$(sort $(basename $(notdir $(wildcard conf/model/*.yaml)))))
# GPU when one is visible, else CPU; override with `make run HARDWARE=gpu_bf16`.
HARDWARE ?= $(shell $(PY) -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)

.DEFAULT_GOAL := help
.PHONY: help setup data run test test-fast figures clean bench reproduce

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

data: ## install Debian's dataset-fashion-mnist when apt is usable as root (skipped quietly otherwise)
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "could not install dataset-fashion-mnist; genbench will look for data.root or the HF hub"; \
	fi

setup: $(STAMP) data ## create .venv and install genbench with its dev extra, plus the data

run: setup ## train every family (conf/model/) under one budget, evaluate, write results/fashion_mnist_default/
	$(PY) -m genbench.train -m experiment=fashion_mnist_default model=$(FAMILIES) hardware=$(HARDWARE)
	$(PY) -m genbench.report sweep=runs/fashion_mnist_default out=results/fashion_mnist_default $(REPORT_ARGS)

# `make reproduce RESULTS=results/other_sweep` for another results folder
RESULTS ?= results/fashion_mnist_default

reproduce: setup ## retrain and rescore results/fashion_mnist_default (or RESULTS=DIR) from its own records, cell by cell
	$(PY) -m genbench.reproduce $(RESULTS)

test: setup ## the whole test suite (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-fast: setup ## the suite without tests marked slow
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

figures: setup ## redraw the default comparison's tables and figures from runs/fashion_mnist_default
	$(PY) -m genbench.report sweep=runs/fashion_mnist_default out=results/fashion_mnist_default $(REPORT_ARGS)

bench: setup ## genbench vs diffusers, a pytorch/examples DCGAN, torch-fidelity and a bare loop: results/bench/<machine>.json
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean: ## remove runs, caches and the venv (results/ stays)
	rm -rf runs outputs multirun .pytest_cache $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
