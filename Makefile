# Everyday commands. `make run` and `make test` do all the set-up they need.

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/warden
export CARGO_TARGET_DIR ?= $(CACHE)/target
CONFIG ?= config/warden.toml
PYTHON_VENV := $(CACHE)/sdk-venv
PYTHON := $(PYTHON_VENV)/bin/python
NODE_SDK := $(CACHE)/sdk-node
CONSOLE_BROWSER := $(CACHE)/console-browser
TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)

.PHONY: run test lint fmt build release toolchain sdk-venv sdk-node console-browser bench bench-rag eval-retrieval clean

## Run Warden with the example config (config/warden.toml), with Milvus Lite and the embedding model.
run: toolchain
	scripts/run.sh $(CONFIG)

## The whole test suite: format, lints, unit and integration tests against the real Milvus (Lite
## and standalone), the real embedding model, a real llama.cpp server, and the OpenAI SDK tests.
test: toolchain sdk-venv sdk-node console-browser lint
	scripts/test.sh

lint: toolchain
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	# The ingestion libraries compared on the eval sets (README, "Ingestion"): kept compiling.
	cargo clippy --locked --lib --features ingest-libs -- -D warnings

fmt:
	cargo fmt

build: toolchain
	cargo build --locked

release: toolchain
	cargo build --release --locked

## Benchmark: Warden's overhead over a fake upstream, measured side by side.
bench: toolchain
	scripts/redis.sh setup
	cargo build --release --locked --bin warden --example bench
	$(CARGO_TARGET_DIR)/release/examples/bench

## Benchmark: the grounding path (embedding, Milvus insert and search, ingestion, and the time to
## first token that retrieval adds), against Milvus Lite and the real embedding model.
bench-rag: toolchain
	cargo build --release --locked --bin warden --example bench_rag
	scripts/bench-rag.sh

## Retrieval quality on four eval sets (eval/sets: manual pages, Python library reference,
## HOWTOs/tutorial/FAQ, C API reference): hit@1/3/5 and MRR@10 of dense, keyword and hybrid
## search (and a pure-BM25 baseline) per set and their mean, a fusion grid with a
## leave-one-set-out choice, then the search latency of hybrid against dense on 10,000 chunks.
## Milvus Lite and the embedding model, as in `make test`; EVAL_ENGINE=lite25 runs it on Milvus
## Lite 2.5.1 (C++) instead of 3.2.2; EVAL_SETS picks sets.
eval-retrieval: toolchain
	cargo build --release --locked --bin warden --example eval_retrieval
	scripts/eval-retrieval.sh

## The pinned toolchain, made from the machine's own when it is the same version (no download).
toolchain:
	@scripts/toolchain.sh $(TOOLCHAIN)

## The official Node SDK (npm `openai`, pinned), for the SDK tests.
sdk-node: $(NODE_SDK)/.installed

$(NODE_SDK)/.installed: tests/sdk/node/package.json tests/sdk/node/package-lock.json
	scripts/node-sdk.sh $(NODE_SDK)
	touch $@

## Debian's Chromium and npm's playwright-core (pinned) for the console's browser test.
console-browser:
	scripts/console-browser.sh $(CONSOLE_BROWSER)

## Python environment with the official openai SDK, for the SDK tests.
sdk-venv: $(PYTHON_VENV)/.installed

$(PYTHON_VENV)/.installed: tests/sdk/requirements.txt
	python3 -m venv $(PYTHON_VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
	touch $@

clean:
	cargo clean
