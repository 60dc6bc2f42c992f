"""An in-process Nostr relay (nostr-sdk's LocalRelay) on loopback for tests and benchmarks:
they never touch public relays."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import nostr_sdk

from mesh_llm.network import Transport, generate_key
from mesh_llm.protocol import encode_token

T = TypeVar("T")


class RelayThread:
    """A LocalRelay served by an event loop in a daemon thread; ``call`` runs a coroutine
    there (for publishing test listings)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._relay: Any = None
        self.url = ""

    def start(self) -> RelayThread:
        self._thread.start()

        async def boot() -> str:
            self._relay = nostr_sdk.LocalRelayBuilder().addr("127.0.0.1").build()
            await self._relay.run()
            return str(await self._relay.url())

        self.url = self.call(boot)
        return self

    def call(self, factory: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        async def wrap() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def stop(self) -> None:
        if self._relay is not None:
            self._relay.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@contextlib.contextmanager
def local_relay() -> Iterator[RelayThread]:
    relay = RelayThread().start()
    try:
        yield relay
    finally:
        relay.stop()


async def dead_token() -> str:
    """The invite token of an endpoint that has shut down (nobody answers at its address)."""
    transport = await Transport.bind(generate_key(), no_relay=True, bind_ip="127.0.0.1")
    token = encode_token(transport.addr())
    await transport.close()
    return token
