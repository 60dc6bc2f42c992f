# mesh-llm: the two commands a new machine needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= SmolLM2-135M-Instruct
PYTEST_ARGS ?=

.PHONY: run test setup venv backend model lint check unit e2e proto bench clean

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

setup: venv backend model

## run: set up, then start a node serving the default model
run: setup
	$(BIN)/mesh-llm --model $(MODEL)

lint: venv
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

## test: set up, then the whole suite (lint, types, layering, unit, simulations, end to end)
test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit tests/sim $(PYTEST_ARGS)

proto: venv
	$(BIN)/python -m grpc_tools.protoc -I src/mesh_llm/protocol --python_out=src/mesh_llm/protocol/generated --pyi_out=src/mesh_llm/protocol/generated src/mesh_llm/protocol/node.proto

bench: setup
	$(BIN)/python bench/bench_proxy.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
