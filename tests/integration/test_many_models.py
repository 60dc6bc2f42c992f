"""End to end: several models per node and per mesh, runtime load/unload, cold starts, standby.

Real mesh-llm processes over real iroh on loopback, real llama-server. The second and third models
are the default model's file under other names (symlinks in each node's own model store), so
every node decides from its own disk what it could load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.harness import MeshNode, post_json, smollm_path, wait_for

pytestmark = pytest.mark.e2e

SMOL = "SmolLM2-135M-Instruct"
MESH_ARGS = ["--no-relay", "--bind-ip", "127.0.0.1", "--parallel", "2"]


def model_store(root: Path, *names: str, with_smol: bool = True) -> dict[str, str]:
    """A node's environment with its own model store: the default model (under its catalog file
    name) and ``names`` as copies of it; an empty Hugging Face cache."""
    store = root / "models"
    store.mkdir(parents=True, exist_ok=True)
    src = smollm_path()
    if with_smol:
        (store / src.name).symlink_to(src)
    for name in names:
        (store / f"{name}.gguf").symlink_to(src)
    hf = root / "hf"
    hf.mkdir(exist_ok=True)
    return {"MESH_LLM_MODELS_DIR": str(store), "HF_HUB_CACHE": str(hf)}


def cli(node: MeshNode, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mesh_llm", *args, "--port", str(node.console_port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def client(node: MeshNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=180)


def chat(node: MeshNode, model: str, max_tokens: int = 4) -> str:
    raw = client(node).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=max_tokens,
        temperature=0,
    )
    reply = raw.parse()
    assert reply.choices[0].message.content is not None
    answered: str = raw.headers["x-mesh-llm-model"]
    return answered


def local(node: MeshNode) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in node.status()["local_models"]}


class LongStream(threading.Thread):
    """A streamed chat of ``tokens`` tokens (``ignore_eos``), recording how it ended."""

    def __init__(self, node: MeshNode, model: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.node, self.model, self.tokens = node, model, tokens
        self.first = threading.Event()
        self.chunks = 0
        self.finish: str | None = None
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        try:
            stream = client(self.node).chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Count upwards from one."}],
                max_tokens=self.tokens,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.chunks += 1
                    self.first.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish = chunk.choices[0].finish_reason
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.first.set()


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[MeshNode]:
    env = model_store(tmp_path / "A", "tiny-b", "tiny-c")
    node = MeshNode("A", tmp_path / "A", ["--model", SMOL, "--max-vram", "0.25", *MESH_ARGS])
    node.env.update(env)
    node.start()
    try:
        node.wait_models({SMOL}, timeout=180)
        yield node
    finally:
        node.stop()


def test_load_unload_status_and_memory_accounting(solo: MeshNode) -> None:
    """mesh-llm load/unload/status end to end; a load that does not fit is refused with the
    figures and leaves the node serving; an unload lets an in-flight stream finish."""
    node = solo
    try:
        done = cli(node, "load", "tiny-b")
        assert done.returncode == 0, done.stderr
        assert "loaded tiny-b" in done.stdout
        assert {SMOL, "tiny-b"} <= set(node.model_ids())
        assert chat(node, "tiny-b") == "tiny-b"

        again = cli(node, "load", "tiny-b")
        assert again.returncode == 1
        assert "409" in again.stderr
        assert "already loaded" in again.stderr

        status, body = post_json(f"{node.console}/api/runtime/models", {"model": "tiny-c"})
        assert status == 422, body
        assert "does not fit" in body["error"]
        assert "0.25 GB" in body["error"]
        assert "tiny-c" not in local(node)
        assert chat(node, SMOL) == SMOL  # still serving what it had

        shown = cli(node, "status")
        assert shown.returncode == 0, shown.stderr
        assert "tiny-b: ready" in shown.stdout
        assert f"{SMOL}: ready" in shown.stdout

        stream = LongStream(node, "tiny-b", tokens=700)
        stream.start()
        assert stream.first.wait(60), "the stream never started"
        unload = cli(node, "unload", "tiny-b")
        unloaded_at = time.monotonic()
        stream.join(120)
        assert unload.returncode == 0, unload.stderr
        assert stream.error is None, stream.error
        assert stream.finish == "length"
        assert stream.chunks >= 600
        assert unloaded_at >= stream.ended_at - 0.5, "the unload did not wait for the stream"
        assert "tiny-b" not in local(node)

        gone = cli(node, "unload", "tiny-b")
        assert gone.returncode == 1
        assert "404" in gone.stderr
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.log_tail()}") from None


def test_cold_start_of_a_model_on_disk(solo: MeshNode) -> None:
    """A request for a model nobody serves but this node has on disk waits for it to load and
    is answered (streamed: comments while loading, then the answer in the same stream); one that
    does not fit, or was unloaded by hand, gets a 503 that says why."""
    node = solo
    try:
        events = stream_events(node, "tiny-c")
        assert events[-1] == "data: [DONE]", events
        assert not any('"error"' in e for e in events), events
        assert any('"content"' in e for e in events), events
        assert local(node)["tiny-c"]["status"] == "ready"

        # SmolLM2 and tiny-c take 0.2 of the 0.25 GB: tiny-b does not fit anywhere.
        with pytest.raises(openai.APIStatusError) as refused:
            chat(node, "tiny-b")
        assert refused.value.status_code == 503
        assert "no node has room for tiny-b" in str(refused.value)

        assert cli(node, "unload", "tiny-c").returncode == 0
        with pytest.raises(openai.APIStatusError) as unloaded:
            chat(node, "tiny-c")
        assert unloaded.value.status_code == 503
        assert "unloaded on this node by hand" in str(unloaded.value)

        started = time.monotonic()  # now tiny-b fits: a plain request cold-starts it
        assert chat(node, "tiny-b") == "tiny-b"
        print(f"cold start (plain): {time.monotonic() - started:.2f} s to the answer")
        assert local(node)["tiny-b"]["status"] == "ready"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.log_tail()}") from None


def stream_events(node: MeshNode, model: str) -> list[str]:
    """A streamed chat completion read raw: its ``data:`` lines (after checking the head)."""
    req = urllib.request.Request(
        f"{node.api}/v1/chat/completions",
        data=json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8,
                "stream": True,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-mesh-llm-model"] == model
        text = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith("data: ")]


def test_an_unknown_model_is_not_cold_started(solo: MeshNode) -> None:
    """A name no disk and no catalog knows keeps the fallback (substitution), at once."""
    started = time.monotonic()
    assert chat(solo, "gpt-4o") == SMOL
    assert time.monotonic() - started < 10
    assert set(local(solo)) == {SMOL}


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[MeshNode, MeshNode, MeshNode]]:
    a = MeshNode(
        "A",
        tmp_path / "A",
        ["--model", SMOL, "--model", "tiny-b", "--max-vram", "0.35", *MESH_ARGS],
    )
    a.env.update(model_store(tmp_path / "A", "tiny-b", "tiny-c"))
    nodes = [a]
    try:
        a.start()
        a.wait_models({SMOL, "tiny-b"}, timeout=180)
        token = wait_for(lambda: a.status()["token"], 30, "A's token")
        b = MeshNode("B", tmp_path / "B", ["--model", "tiny-b", "--join", token, *MESH_ARGS])
        b.env.update(model_store(tmp_path / "B", "tiny-b", with_smol=False))
        c = MeshNode("C", tmp_path / "C", ["--client", "--join", token, *MESH_ARGS])
        nodes += [b.start(), c.start()]
        for node in nodes:
            node.wait_models({SMOL, "tiny-b"}, timeout=180)
        yield a, b, c
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail(40) for n in nodes)) from None
    finally:
        for node in nodes:
            node.stop()


def test_three_nodes_two_models_cold_start_through_a_peer_and_unload_fails_over(
    three: tuple[MeshNode, MeshNode, MeshNode],
) -> None:
    a, b, c = three
    try:
        assert chat(c, SMOL) == SMOL
        assert chat(c, "tiny-b") == "tiny-b"
        # tiny-c is on A's disk only: the client's request has A load it, then is answered.
        assert chat(c, "tiny-c") == "tiny-c"
        assert local(a)["tiny-c"]["status"] == "ready"
        assert "tiny-c" not in local(b)
        models = {m["name"]: m for m in json.loads(_get(f"{c.console}/api/models"))["mesh_models"]}
        assert models["tiny-c"]["status"] == "warm"
        assert models["tiny-c"]["request_count"] >= 1

        # Unload tiny-b on A during a stream from A: it finishes; the next request goes to B.
        stream = LongStream(a, "tiny-b", tokens=700)
        stream.start()
        assert stream.first.wait(60)
        status, body = _delete(f"{a.console}/api/runtime/models/tiny-b")
        stream.join(120)
        assert status == 200
        assert body == {"dropped": "tiny-b"}
        assert stream.error is None, stream.error
        assert stream.finish == "length"
        assert "tiny-b" not in local(a)
        for _ in range(3):
            assert chat(a, "tiny-b") == "tiny-b"
        assert "tiny-b" not in local(a)  # served by B, not cold-started again here
        assert local(b)["tiny-b"]["status"] == "ready"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail(40) for n in three)) from None


def test_a_standby_node_promotes_to_the_hot_model(tmp_path: Path) -> None:
    a = MeshNode("A", tmp_path / "A", ["--model", SMOL, *MESH_ARGS])
    a.env.update(model_store(tmp_path / "A"))
    nodes = [a]
    try:
        a.start()
        a.wait_models({SMOL}, timeout=180)
        token = wait_for(lambda: a.status()["token"], 30, "A's token")
        # 0.2 GB: nothing in the catalog but the default model fits, and A serves that one.
        b = MeshNode("B", tmp_path / "B", ["--join", token, "--max-vram", "0.2", *MESH_ARGS])
        b.env.update(model_store(tmp_path / "B"))
        nodes.append(b.start())
        standby = wait_for(
            lambda: (s := b.status())["node_status"] == "Standby" and s["standby_reason"] and s,
            60,
            "B to stand by",
        )
        assert standby["local_models"] == []
        for _ in range(10):
            chat(a, SMOL, max_tokens=1)
        crossed = time.monotonic()
        wait_for(lambda: local(b).get(SMOL, {}).get("status") == "ready", 90, "B to serve SmolLM2")
        promoted = time.monotonic() - crossed
        assert b.status()["node_status"] == "Serving"
        demand = {d["model"]: d for d in b.status()["demand"]}
        assert demand[SMOL]["request_count"] >= 10
        print(f"promotion: {promoted:.1f} s from the 10th request to B serving")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail(40) for n in nodes)) from None
    finally:
        for node in nodes:
            node.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _delete(url: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")
