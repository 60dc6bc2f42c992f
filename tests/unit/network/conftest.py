"""Real iroh endpoints on loopback (relays disabled) for the network tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest

from mesh_llm.network.relay import native as native_relay
from mesh_llm.network.transport import BiStream, Conn, Transport

STEP = 10.0  # generous bound for any single loopback operation


@pytest.fixture(params=["python", "native"])
def relay_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the relay threads' loops in Python, then in C (``native_relay``)."""
    if request.param == "python":
        monkeypatch.setattr(native_relay, "_lib", None)
    elif shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the native relay cannot be built here")
    elif not native_relay.load():
        pytest.fail(f"the native relay did not load: {native_relay.unavailable_reason()}")
    return request.param


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Transport, Transport]]:
    """Two bound endpoints, closed after the test."""
    a = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    b = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def connect(a: Transport, b: Transport) -> tuple[Conn, Conn]:
    """a dials b; returns (a's side, b's side)."""
    async with asyncio.timeout(STEP):
        accepted = asyncio.ensure_future(b.accept())
        try:
            dialled = await a.connect(b.addr(), timeout=STEP)
            return dialled, await accepted
        finally:
            accepted.cancel()


async def open_stream(a: Transport, b: Transport, first: bytes) -> tuple[BiStream, BiStream]:
    """Connect, open a stream from a to b and deliver ``first``; returns (a's end, b's end)."""
    return await open_stream_on(*await connect(a, b), first)


async def open_stream_on(ab: Conn, ba: Conn, first: bytes) -> tuple[BiStream, BiStream]:
    """Open a stream on an existing connection and deliver ``first``; returns (ab's end, ba's)."""
    async with asyncio.timeout(STEP):
        out = await ab.open_bi()
        await out.write(first)
        inbound = await ba.accept_bi()
        assert await inbound.read_exact(len(first)) == first
    return out, inbound
