"""Shared pieces of the API conformance suite (tests/integration/test_conformance_*.py).

Each conformance module starts one node with ``--embeddings`` (module scope), so that node
answers chat, completions, responses, messages and embeddings. Prompts, token limits and the
tool are chosen so the bundled SmolLM2 answers quickly and, with its bundled tool template,
calls the tool deterministically (temperature 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.harness import MeshNode, http_json, wait_for

MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_DIM = 576  # SmolLM2-135M's llama.embedding_length
CTX = 8192  # SmolLM2's trained context, which the node never exceeds
LOOPBACK_MESH = ["--no-relay", "--bind-ip", "127.0.0.1"]

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_QUESTION = "What is the weather in Paris?"
WEATHER_RESULT = {"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "cloudy"}
OPENAI_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_PARAMETERS,
    },
}


def start_node(home: Path, name: str, *extra: str) -> MeshNode:
    """A node serving SmolLM2 on loopback only; returns once the model is listed."""
    node = MeshNode(name, home, ["--model", MODEL, "--parallel", "4", *LOOPBACK_MESH, *extra])
    node.start()
    try:
        node.wait_models({MODEL}, timeout=180)
    except BaseException:
        node.stop()
        raise
    return node


def embeddings_ready(node: MeshNode) -> bool:
    roles = {(m["role"], m["status"]) for m in node.status()["local_models"]}
    return ("embeddings", "ready") in roles


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshNode]:
    n = start_node(tmp_path_factory.mktemp("conformance"), "conformance", "--embeddings")
    try:
        wait_for(lambda: embeddings_ready(n), 120, "the embedding llama-server")
        yield n
    finally:
        n.stop()


def check_weather_arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    """Tool-call arguments parse as JSON and match the tool's schema; returns them."""
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(parsed, WEATHER_PARAMETERS)
    assert isinstance(parsed, dict)
    return parsed


def mentions_the_result(answer: str) -> bool:
    """The final answer of a tool round trip uses the tool result (or at least the question)."""
    words = ("18", "paris", "cloud", "celsius")
    return any(w in answer.lower() for w in words)


def chat_pid(node: MeshNode) -> int:
    procs = http_json(f"{node.console}/api/runtime/processes")["processes"]
    pids = [p["pid"] for p in procs if p["role"] == "chat" and p["pid"]]
    assert len(pids) == 1, procs
    return int(pids[0])
