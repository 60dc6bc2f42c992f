"""This node's part in split inference over RPC.

- Worker side: one ``rpc-server`` on 127.0.0.1 (never exposed: llama.cpp's RPC is unauthenticated),
  reached only through inbound RPC tunnels (stream 0x02) from admitted peers. The tunnel's worker
  end reads weights from this node's own GGUFs (or its bounded store) instead of the network.
- Host side: one local TCP port per worker, each tunnelling to that worker's rpc-server; these are
  the ``--rpc 127.0.0.1:<port>`` endpoints of the split's llama-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from mesh_llm.errors import MeshLlmError, TransportError
from mesh_llm.inference import (
    PidRegistry,
    RestartPolicy,
    RpcServer,
    describe_exit,
    host_weights,
    local_weight_files,
)
from mesh_llm.mesh import MeshService
from mesh_llm.models import RpcStore
from mesh_llm.network import BiStream, RpcTunnelHost, WorkerSources, serve_rpc_tunnel
from mesh_llm.protocol import PeerId, RpcTunnelStats, StreamType
from mesh_llm.system import cache_dir

__all__ = ["RpcLink"]

log = logging.getLogger(__name__)


class RpcLink:
    def __init__(
        self,
        rpc_binary: Path,
        *,
        log_dir: Path,
        model_paths: list[Path],
        device: str | None,
        registry: PidRegistry | None = None,
        on_change: Callable[[], None] | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._on_change = on_change or (lambda: None)
        self._policy = policy or RestartPolicy()
        self.restarts = 0
        self._stopping = False
        self._server = RpcServer(
            rpc_binary, log_path=log_dir / "rpc-server.log", registry=registry, device=device
        )
        self._model_paths = model_paths
        self._sources: WorkerSources | None = None
        self._service: MeshService | None = None
        self._hosts: dict[tuple[bytes, Path], RpcTunnelHost] = {}
        self._store: RpcStore | None = None
        self.stats: dict[bytes, RpcTunnelStats] = {}
        self.error: str | None = None

    @property
    def port(self) -> int | None:
        """The rpc-server's port while it runs and accepts (None while down or starting)."""
        return self._server.port if self._server.running and self._server.port else None

    async def start(self, service: MeshService) -> None:
        """Start the rpc-server and accept RPC tunnels; a failure leaves this node solo-only."""
        self._service = service
        try:
            await self._server.start()
        except MeshLlmError as exc:
            self.error = str(exc)
            log.warning("rpc-server did not start, this node cannot lend its memory: %s", exc)
            return
        self._store = RpcStore(cache_dir() / "rpc-store")
        files = await asyncio.to_thread(local_weight_files, self._model_paths)
        self._sources = WorkerSources(files=files, store=self._store)
        service.rpc_handler = self._serve

    async def run(self) -> None:
        """Supervise the rpc-server until cancelled: when it exits, this node stops offering
        itself as a worker (``on_change`` re-announces ``rpc_ready``), then it is restarted with
        backoff; back up, the node offers itself again and hosts re-plan their splits. After
        ``policy.max_crashes`` quick crashes in a row it stays down with ``error`` set."""
        if self._sources is None:
            return  # never started (start() failed): nothing to supervise
        crashes = 0
        while True:
            started = time.monotonic()
            code = await self._server.wait()
            if self._stopping:
                return
            uptime = time.monotonic() - started
            crashes = self._policy.crashes_after_exit(crashes, uptime)
            delay = self._policy.next_delay(crashes)
            reason = f"rpc-server {describe_exit(code)}; log: {self._server.log_path}"
            self._on_change()
            if delay is None:
                self.error = f"{reason}; gave up after {crashes - 1} restarts in a row"
                log.error("%s; this node no longer lends its memory", self.error)
                self._on_change()
                return
            self.error = f"{reason}; restarting in {delay:.0f} s"
            log.warning("%s (this node is not a worker until it is back)", self.error)
            await asyncio.sleep(delay)
            try:
                await self._server.start()
            except MeshLlmError as exc:
                self.error = f"rpc-server did not restart: {exc}"
                log.warning("%s", self.error)
                continue
            self.restarts += 1
            self.error = None
            log.info("rpc-server is back (restart %d); offering this node as a worker", crashes)
            self._on_change()

    async def _serve(self, peer: PeerId, stream: BiStream) -> None:
        port, sources = self.port, self._sources
        if port is None or sources is None:
            await stream.reset(5)
            return
        stats = self.stats.setdefault(peer, RpcTunnelStats())
        await serve_rpc_tunnel(stream, port, sources, stats=stats, label=peer[:5].hex())

    async def endpoint(self, peer: bytes, model_path: Path) -> str:
        """``127.0.0.1:<port>`` tunnelling to ``peer``'s rpc-server (created on first use)."""
        service = self._service
        if service is None:
            raise TransportError("the mesh is not running")
        host = self._hosts.get((peer, model_path))
        if host is None:

            async def open_stream() -> BiStream:
                # the split plan's ids (inference.Member.node_id) are plain bytes
                return await service.open_stream(PeerId(peer), StreamType.TUNNEL_RPC)

            stats = self.stats.setdefault(peer, RpcTunnelStats())
            weights = await asyncio.to_thread(host_weights, model_path)
            host = RpcTunnelHost(open_stream, weights, label=peer[:5].hex(), stats=stats)
            await host.start()
            self._hosts[(peer, model_path)] = host
        return host.endpoint

    async def release(self, keep: set[bytes]) -> None:
        """Close the host-side tunnels to workers not in ``keep``."""
        for key in [k for k in self._hosts if k[0] not in keep]:
            host = self._hosts.pop(key)
            with contextlib.suppress(MeshLlmError, OSError):
                await host.aclose()

    def status(self) -> dict[str, object]:
        return {
            "port": self.port,
            "pid": self._server.pid,
            "running": self._server.running,
            "error": self.error,
            "restarts": self.restarts,
            "tunnels": {peer.hex(): s.snapshot() for peer, s in self.stats.items()},
        }

    async def stop(self) -> None:
        self._stopping = True
        await self.release(set())
        await self._server.stop()
        if self._store is not None:
            self._store.close()
            self._store = None
