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
from pathlib import Path

from mesh_llm.errors import MeshLlmError, TransportError
from mesh_llm.inference import PidRegistry, RpcServer, host_weights, local_weight_files
from mesh_llm.mesh import MeshService
from mesh_llm.models import RpcStore
from mesh_llm.network import BiStream, RpcTunnelHost, WorkerSources, serve_rpc_tunnel
from mesh_llm.protocol import RpcTunnelStats, StreamType
from mesh_llm.system import cache_dir

__all__ = ["RpcLink"]

log = logging.getLogger(__name__)


class RpcLink:
    def __init__(
        self,
        rpc_binary: Path,
        *,
        state: Path,
        model_paths: list[Path],
        device: str | None,
        registry: PidRegistry | None = None,
    ) -> None:
        self._server = RpcServer(
            rpc_binary, log_path=state / "logs" / "rpc-server.log", registry=registry, device=device
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
        return self._server.port if self._server.running else None

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

    async def _serve(self, peer: bytes, stream: BiStream) -> None:
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
                return await service.open_stream(peer, StreamType.TUNNEL_RPC)

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
            "tunnels": {peer.hex(): s.snapshot() for peer, s in self.stats.items()},
        }

    async def stop(self) -> None:
        await self.release(set())
        await self._server.stop()
        if self._store is not None:
            self._store.close()
            self._store = None
