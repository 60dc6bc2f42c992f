"""End to end: one real mesh-llm node, real llama-server, the bundled SmolLM2 model."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from tests.integration.harness import MeshNode, free_port, http_json, wait_for

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshNode]:
    home = tmp_path_factory.mktemp("node")
    n = MeshNode("solo", home, ["--model", MODEL, "--parallel", "8"]).start()
    try:
        n.wait_models({MODEL}, timeout=180)
        yield n
    finally:
        n.stop()


def client(node: MeshNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list_has_the_served_model(node: MeshNode) -> None:
    models = client(node).models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL]
    entry = models.data[0].model_dump()
    assert entry["owned_by"] == "mesh-llm"
    assert "text" in entry["capabilities"]


def test_chat_non_streaming(node: MeshNode) -> None:
    raw = client(node).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert raw.headers["x-mesh-llm-model"] == MODEL
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_chat_streaming(node: MeshNode) -> None:
    stream = client(node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces).strip()


def test_eight_concurrent_streams(node: MeshNode) -> None:
    def one(i: int) -> str:
        stream = client(node).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write a line about the number {i}."}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(8)))
    assert all(t.strip() for t in texts), texts


def test_unknown_model_falls_back_and_says_which_answered(node: MeshNode) -> None:
    raw = client(node).chat.completions.with_raw_response.create(
        model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert raw.headers["x-mesh-llm-model"] == MODEL
    assert raw.parse().choices[0].message.content is not None


def test_malformed_request_gets_openai_error(node: MeshNode) -> None:
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        data = sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "message" in json.loads(body)["error"]
    # still serving afterwards
    assert client(node).models.list().data


def test_status_and_events(node: MeshNode) -> None:
    status = node.status()
    assert status["node_status"] == "Serving"
    assert status["llama_ready"] is True
    assert status["hosted_models"] == [MODEL]
    assert status["api_port"] == node.api_port
    assert status["my_vram_gb"] > 0
    assert status["llama_cpp"]["commit"] == "0c1e570"
    if shutil.which("cc") or shutil.which("gcc"):  # streamed responses are relayed in C
        wait_for(lambda: node.status()["relay"]["native"], 30, "the C relay loop")
    runtime = http_json(f"{node.console}/api/runtime")
    assert runtime["models"][0]["name"] == MODEL
    assert runtime["models"][0]["status"] == "ready"
    procs = http_json(f"{node.console}/api/runtime/processes")["processes"]
    assert psutil.pid_exists(procs[0]["pid"])

    with urllib.request.urlopen(f"{node.console}/api/events", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        line = resp.readline()
        assert line.startswith(b"data: ")
        event = json.loads(line[len(b"data: ") :])
        assert event["hosted_models"] == [MODEL]


def _llama_children(node: MeshNode) -> list[psutil.Process]:
    return [p for p in node.children() if "llama-server" in p.name()]


def _serve(tmp_path: Path, name: str) -> MeshNode:
    n = MeshNode(name, tmp_path / name, ["--model", MODEL]).start()
    n.wait_models({MODEL}, timeout=180)
    return n


def test_sigterm_leaves_no_llama_server(tmp_path: Path) -> None:
    n = _serve(tmp_path, "term")
    children = _llama_children(n)
    assert children, "expected a llama-server child"
    n.signal(signal.SIGTERM)
    assert n.proc is not None
    assert n.proc.wait(timeout=30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned: {alive}"


def test_sigkill_leaves_no_llama_server(tmp_path: Path) -> None:
    n = _serve(tmp_path, "kill")
    children = _llama_children(n)
    assert children
    n.signal(signal.SIGKILL)
    assert n.proc is not None
    n.proc.wait(timeout=10)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned after SIGKILL: {alive}"


def _run_cli(args: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MESH_LLM_HOME": str(home)},
        check=False,
    )


def test_no_arguments_prints_help_and_binds_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run_cli([], tmp_path)
    assert result.returncode == 0
    assert "--model" in result.stdout
    assert time.monotonic() - started < 30


def test_invalid_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    result = _run_cli(
        ["--gguf", str(bad), "--port", str(free_port()), "--console", str(free_port())], tmp_path
    )
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "broken.gguf" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli(
            ["--model", MODEL, "--port", str(port), "--console", str(free_port())], tmp_path
        )
    assert result.returncode == 1
    assert "in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = _run_cli(["--model", "/nonexistent/model.gguf"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error:")


def test_restart_after_sigkill_of_node_reaps_nothing_foreign(tmp_path: Path) -> None:
    """A node started in a state dir whose previous run was SIGKILLed starts cleanly."""
    first = _serve(tmp_path, "again")
    first.signal(signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    second = MeshNode("again2", tmp_path / "again", ["--model", MODEL]).start()
    try:
        second.wait_models({MODEL}, timeout=180)
        wait_for(lambda: _llama_children(second), 10, "llama-server child")
    finally:
        second.stop()
