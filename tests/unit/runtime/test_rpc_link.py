"""The worker's rpc-server is supervised: a crash withdraws the node as a worker, a restart
offers it again (issue 16)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mesh_llm.inference import RestartPolicy
from mesh_llm.runtime.rpc_link import RpcLink

FAKE = Path(__file__).resolve().parents[2] / "fakes" / "fake_llama_binaries.py"


@pytest.fixture
def rpc_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bin" / "ggml-rpc-server"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    path.chmod(0o755)
    return path


async def wait_until(predicate: Any, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polls state the supervisor task changes
            await asyncio.sleep(0.02)


async def test_a_crashed_rpc_server_is_withdrawn_then_restarted(
    rpc_binary: Path, tmp_path: Path
) -> None:
    ready_seen: list[bool] = []
    link: RpcLink | None = None

    def changed() -> None:
        assert link is not None
        ready_seen.append(link.port is not None)

    link = RpcLink(
        rpc_binary,
        log_dir=tmp_path / "logs",
        model_paths=[],
        device=None,
        on_change=changed,
        policy=RestartPolicy(base_delay_s=0.2, max_crashes=3),
    )
    service = SimpleNamespace(rpc_handler=None)
    await link.start(service)  # type: ignore[arg-type]
    first_pid = link.status()["pid"]
    assert link.port is not None
    assert isinstance(first_pid, int)
    runner = asyncio.create_task(link.run())
    try:
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: link.port is None)
        await wait_until(lambda: link.error is not None and "SIGKILL" in link.error)
        assert ready_seen[0] is False  # withdrawn (re-announced) while down
        await wait_until(lambda: link.port is not None)
        assert link.status()["pid"] != first_pid
        assert link.restarts == 1
        assert link.error is None
        assert ready_seen[-1] is True  # offered again once back
    finally:
        await link.stop()
        await asyncio.wait_for(runner, 5)  # a stop is not a crash: run() returns
    assert link.restarts == 1


async def test_an_rpc_server_that_cannot_start_leaves_the_node_solo(
    rpc_binary: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(rpc_binary.write_text, "#!/bin/sh\nexit 3\n")
    link = RpcLink(
        rpc_binary,
        log_dir=tmp_path / "logs",
        model_paths=[],
        device=None,
        policy=RestartPolicy(base_delay_s=0.01, max_crashes=2),
    )
    service = SimpleNamespace(rpc_handler=None)
    await link.start(service)  # type: ignore[arg-type]
    assert link.port is None
    assert link.error is not None  # start() failed: the node is solo-only, run() has nothing to do
    await asyncio.wait_for(link.run(), 5)
    await link.stop()
