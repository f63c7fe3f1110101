# verinfer: `make demo` runs the whole flow, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NPM_STAMP := node_modules/.installed

.PHONY: setup test lint typecheck pytest demo bench models contracts clean

setup: $(STAMP) $(NPM_STAMP)

# anvil (local EVM for tests and the demo) and solc-js, pinned in package-lock.json.
$(NPM_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# Rebuild the committed ABI + bytecode artifacts; the tests fail when they are stale.
contracts: $(NPM_STAMP)
	node contracts/build.mjs

# Reinstalls only when the project definition changes, so repeated runs are quick.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

demo: setup
	$(BIN)/python -m verinfer.demo

bench: setup
	$(BIN)/python -m bench.bench_attestation
	$(BIN)/python -m bench.bench_server
	$(BIN)/python -m bench.bench_gas

# Retrain and export the shipped models (needs torch; a separate venv keeps it out of the server's).
TRAIN_VENV := .venv-train
models:
	@test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install --quiet -r models/requirements-train.txt
	cd models && ../$(TRAIN_VENV)/bin/python train_iris.py
	cd models && ../$(TRAIN_VENV)/bin/python train_lenet.py
	cd models && ../$(TRAIN_VENV)/bin/python build_manifest.py

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo
