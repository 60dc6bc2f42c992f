# mesh-llm: the two commands a new machine needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= SmolLM2-135M-Instruct
PYTEST_ARGS ?=
NODE_SDK := tests/integration/node_sdk

.PHONY: run test setup venv backend model node-sdk browser lint check unit e2e proto bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## backend: locate or build llama.cpp (llama-server, rpc-server); cached under ~/.cache/mesh-llm
backend: venv
	$(BIN)/mesh-llm backend install

## model: make sure the bundled default model is in the local model store
model: venv
	$(BIN)/mesh-llm models download $(MODEL)

## node-sdk: the Node.js `openai` package the conformance suite drives (only where node exists)
node-sdk: $(NODE_SDK)/package-lock.json
	@if ! command -v node >/dev/null 2>&1; then \
		echo "node not found: the Node.js SDK conformance test will be skipped"; \
	elif [ ! -f $(NODE_SDK)/node_modules/.package-lock.json ] || \
	     [ $(NODE_SDK)/package-lock.json -nt $(NODE_SDK)/node_modules/.package-lock.json ]; then \
		cd $(NODE_SDK) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

## browser: Debian's chromium for the console's browser tests (Playwright drives /usr/bin/chromium)
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq chromium >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
		else \
			echo "chromium not installed (apt-get install chromium): the console browser tests will be skipped"; \
		fi; \
	fi

setup: venv backend model

## run: set up, then start a node serving the default model
run: setup
	$(BIN)/mesh-llm --model $(MODEL)

lint: venv
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

# The tunnel, relay and split end-to-end tests once more with the iroh fast path and the C relay
# switched off: the optional parts must stay optional (docs/DESIGN.md "The mesh").
SLOW_PATH_TESTS := tests/integration/test_rpc_tunnel.py tests/integration/test_split.py \
	tests/integration/test_mesh.py -k "rpc_tunnel or through_tunnel or routes_the_others or \
	forms_and_answers or did_not_cross or routes_only_to_the_host or sent_the_weights_once"

## test: set up, then the whole suite (lint, types, layering, unit, simulations, end to end)
test: setup node-sdk browser lint
	$(BIN)/pytest $(PYTEST_ARGS)
	MESH_LLM_IROH_FAST=0 MESH_LLM_NATIVE_RELAY=0 $(BIN)/pytest $(SLOW_PATH_TESTS) $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit tests/sim $(PYTEST_ARGS)

proto: venv
	$(BIN)/python -m grpc_tools.protoc -I src/mesh_llm/protocol --python_out=src/mesh_llm/protocol/generated --pyi_out=src/mesh_llm/protocol/generated src/mesh_llm/protocol/node.proto

bench: setup
	$(BIN)/python bench/bench_proxy.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
