"""The HTTP tunnel (stream 0x04) as the requesting ingress sees it, and per-peer byte counts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mesh_llm.errors import TransportError
from mesh_llm.network.transport import BiStream

__all__ = ["PeerTraffic", "TunnelStream"]


_TRAFFIC_LOCK = threading.Lock()  # counts are also added from relay threads


@dataclass(slots=True)
class PeerTraffic:
    """Bytes carried by HTTP tunnels to and from one peer."""

    sent: int = 0
    received: int = 0

    def add_sent(self, n: int) -> None:
        with _TRAFFIC_LOCK:
            self.sent += n

    def add_received(self, n: int) -> None:
        with _TRAFFIC_LOCK:
            self.received += n


class TunnelStream:
    """An HTTP tunnel (stream 0x04) seen as the ingress's ``UpstreamStream``; counts bytes."""

    def __init__(self, stream: BiStream, traffic: PeerTraffic) -> None:
        self._stream = stream
        self._traffic = traffic

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)
        self._traffic.add_sent(len(data))

    async def read(self, n: int) -> bytes:
        data = await self._stream.read(n)
        self._traffic.add_received(len(data))
        return data

    def read_blocking(self, n: int, cancel: threading.Event, timeout: float | None = None) -> bytes:
        """For the ingress's relay thread (see :func:`mesh_llm.network.relay.relay_from`)."""
        data = self._stream.read_blocking(n, cancel, timeout)
        self._traffic.add_received(len(data))
        return data

    def native_source(self) -> tuple[int, Callable[[int], None]]:
        """The tunnel's receive half and byte counter, for the C relay loop."""
        return self._stream.recv_handle(), self._traffic.add_received

    async def aclose(self) -> None:
        with contextlib.suppress(TransportError):
            await self._stream.reset(0)
        await self._stream.aclose()
