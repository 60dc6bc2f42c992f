"""Real iroh endpoints on loopback (relays disabled) for the network tests."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator

import pytest
from iroh import iroh_ffi

from mesh_llm.cli.environment import fast_path
from mesh_llm.network.relay import native as native_relay
from mesh_llm.network.transport import BiStream, Conn, Transport, _iroh_async

STEP = 10.0  # generous bound for any single loopback operation


@pytest.fixture(params=["python", "native", "generated"])
def relay_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the relay threads' loops in Python, then in C (``native_relay``), then
    in Python over the bindings as shipped (no inline driver, no direct calls: the fallback)."""
    if request.param in ("python", "generated"):
        monkeypatch.setattr(native_relay, "_lib", None)
    if request.param == "generated":
        use_generated_driver(monkeypatch)
    elif request.param == "python":
        pass
    elif not fast_path(os.environ).native_relay:
        pytest.skip("the native relay is switched off (MESH_LLM_NATIVE_RELAY)")
    elif shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the native relay cannot be built here")
    elif not native_relay.load():
        pytest.fail(f"the native relay did not load: {native_relay.unavailable_reason()}")
    return request.param


def use_generated_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the test ends, the bindings run their own async driver, as when the fast path is
    off or does not recognise them (transports bound meanwhile do not install it)."""
    monkeypatch.setattr(iroh_ffi, "_uniffi_rust_call_async", _iroh_async.generated_driver())
    monkeypatch.setattr(_iroh_async, "install", lambda: False)
    assert not _iroh_async.is_installed()


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
