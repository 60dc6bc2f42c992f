"""A user-space UDP relay that adds latency, jitter and loss, and can partition (no netem here).

``UdpDelayRelay(target, delay_s, listen_host, jitter_s=, loss=, seed=)`` listens on
``listen_host``. Each datagram from a client reaches ``target``, and each reply reaches the
client, after ``delay_s`` plus a uniform draw from ``[-jitter_s, +jitter_s]`` (never below 0, so
datagrams may be reordered), unless it is dropped: each one independently with probability
``loss``. The draws come from ``random.Random(seed)``, so a run is repeatable as far as the
arrival order of datagrams is.

``partition()`` drops everything in both directions, datagrams already under way included, until
``heal()``. ``stats`` counts forwarded and dropped datagrams. The relay runs its own event loop in
a thread, so synchronous tests can use it, and stops on ``close()``.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast


@dataclass
class RelayStats:
    forwarded: int = 0
    lost: int = 0
    """Dropped by the random loss."""
    partitioned: int = 0
    """Dropped because the relay was partitioned when it arrived or was due."""


class _Upstream(asyncio.DatagramProtocol):
    """One socket per client towards the target, so replies find their way back."""

    def __init__(self, relay: UdpDelayRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.later(lambda: self.relay.send_to_client(data, self.client))


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpDelayRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_client(data, addr)


class UdpDelayRelay:
    def __init__(
        self,
        target: tuple[str, int],
        delay_s: float,
        listen_host: str = "127.0.0.1",
        *,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        seed: int = 0,
    ) -> None:
        if delay_s < 0 or jitter_s < 0 or not 0.0 <= loss < 1.0:
            raise ValueError("need delay_s >= 0, jitter_s >= 0 and 0 <= loss < 1")
        self.target = target
        self.listen_host = listen_host
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.stats = RelayStats()
        self._rng = random.Random(seed)  # drawn on the relay's loop thread only
        self._partitioned = False
        self._loop = asyncio.new_event_loop()
        self._upstreams: dict[tuple[str, int], _Upstream] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._listener: asyncio.DatagramTransport | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        assert self._listener is not None
        self.port = int(self._listener.get_extra_info("sockname")[1])

    # -- the switch (any thread)

    def partition(self) -> None:
        """Drop every datagram, both ways, until :meth:`heal`."""
        self._partitioned = True

    def heal(self) -> None:
        self._partitioned = False

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    # -- the loop thread

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Listener(self), local_addr=(self.listen_host, 0)
            )
            self._listener = transport
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        for up in self._upstreams.values():
            if up.transport is not None:
                up.transport.close()
        if self._listener is not None:
            self._listener.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def later(self, action: Callable[[], None]) -> None:
        """Run ``action`` (one datagram's delivery) after the delay, unless it is dropped."""
        if self._partitioned:
            self.stats.partitioned += 1
            return
        if self.loss and self._rng.random() < self.loss:
            self.stats.lost += 1
            return
        delay = self.delay_s
        if self.jitter_s:
            delay = max(0.0, delay + self._rng.uniform(-self.jitter_s, self.jitter_s))

        def deliver() -> None:
            if self._partitioned:  # under way when the partition began
                self.stats.partitioned += 1
                return
            self.stats.forwarded += 1
            action()

        self._loop.call_later(delay, deliver)

    def send_to_client(self, data: bytes, client: tuple[str, int]) -> None:
        if self._listener is not None:
            self._listener.sendto(data, client)

    def from_client(self, data: bytes, client: tuple[str, int]) -> None:
        upstream = self._upstreams.get(client)
        if upstream is None:
            upstream = self._upstreams[client] = _Upstream(self, client)
            self._pending[client] = [data]

            async def connect() -> None:
                await self._loop.create_datagram_endpoint(lambda: upstream, remote_addr=self.target)
                for queued in self._pending.pop(client, []):
                    self.later(lambda d=queued: self._send_upstream(upstream, d))

            self._loop.create_task(connect())
            return
        if client in self._pending:
            self._pending[client].append(data)
            return
        self.later(lambda: self._send_upstream(upstream, data))

    @staticmethod
    def _send_upstream(upstream: _Upstream, data: bytes) -> None:
        if upstream.transport is not None:
            upstream.transport.sendto(data)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
