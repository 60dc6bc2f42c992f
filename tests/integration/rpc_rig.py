"""A split without the mesh: real llama-server and rpc-server, both tunnel ends in-process.

The two ends of the RPC tunnel talk over :func:`tests.fakes.fake_stream.stream_pair` instead of
iroh, so what is measured is llama.cpp plus mesh-llm's relay code. Used by the e2e test and by
``bench/bench_rpc_tunnel.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesh_llm.inference import ChildProcess, free_port
from mesh_llm.network import RpcTunnelHost, WorkerSources, serve_rpc_tunnel
from mesh_llm.protocol import HostWeights, RpcTunnelStats
from tests.fakes.fake_stream import PipeStream, stream_pair

PROMPT = "The capital of France is"


class TunnelRig:
    """Host end + worker end of one worker's RPC tunnel, joined by an in-process stream pair."""

    def __init__(self, rpc_port: int, weights: HostWeights | None, sources: WorkerSources) -> None:
        self.rpc_port = rpc_port
        self.sources = sources
        self.worker_stats = RpcTunnelStats()
        self.host = RpcTunnelHost(self._open_stream, weights, label="worker")
        self._workers: set[asyncio.Task[None]] = set()

    async def _open_stream(self) -> PipeStream:
        host_end, worker_end = stream_pair()
        task = asyncio.create_task(
            serve_rpc_tunnel(
                worker_end, self.rpc_port, self.sources, stats=self.worker_stats, label="host"
            )
        )
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)
        return host_end

    async def __aenter__(self) -> TunnelRig:
        await self.host.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.host.aclose()
        if self._workers:
            await asyncio.wait(self._workers, timeout=10)


class LlamaServer:
    """One llama-server child on a free loopback port."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        log_path: Path,
        *,
        rpc: str | None = None,
        ngl: int | None = None,
        threads: int = 1,
    ) -> None:
        self.port = free_port()
        argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["-c", "2048", "-t", str(threads), "--parallel", "1"]
        if rpc:
            argv += ["--rpc", rpc, "--tensor-split", "0.5,0.5"]
        if ngl is not None:
            argv += ["-ngl", str(ngl)]
        self.child = ChildProcess("llama-server", argv, log_path, env={"GGML_RPC_NO_RDMA": "1"})
        self.load_s = 0.0

    async def start(self, limit_s: float = 120.0) -> None:
        """Start and wait for /health; records the load time."""
        t0 = time.monotonic()
        await self.child.start()
        while not await asyncio.to_thread(self._healthy):
            if self.child.returncode is not None:
                raise AssertionError(f"llama-server exited:\n{self.child.log_tail()}")
            if time.monotonic() - t0 > limit_s:
                raise AssertionError(f"llama-server not ready:\n{self.child.log_tail()}")
            await asyncio.sleep(0.1)
        self.load_s = time.monotonic() - t0

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # 503 while loading: the error response holds its socket
            return False
        except (OSError, urllib.error.URLError):
            return False

    async def complete(self, n_predict: int = 32, prompt: str = PROMPT) -> dict[str, Any]:
        body = {
            "prompt": prompt,
            "n_predict": n_predict,
            "temperature": 0,
            "seed": 42,
            "cache_prompt": False,
        }
        return await asyncio.to_thread(self._post, body)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    async def stop(self) -> None:
        await self.child.stop(grace=10)

    async def __aenter__(self) -> LlamaServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
