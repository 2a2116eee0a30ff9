# Two commands on a fresh machine: `make run` (the offline demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all

.PHONY: venv run test lint bench clean

venv: $(STAMP)

# torch is pinned first so that nothing pulls an unpinned (CUDA) build.
$(STAMP): pyproject.toml setup.py mergeflow/methods/_introsort.c mergeflow/methods/_elementwise.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[workflow,test]"
	touch $(STAMP)

# mergeflow run: snakemake, after removing the lock a killed run left (see README, "Faults").
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mergeflow run --cores $(CORES)

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_merge.py

clean:
	rm -rf results .snakemake
