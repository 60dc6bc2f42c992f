"""Direct FFI calls for the relay threads' stream writes and reads, over real iroh on loopback,
against the generated methods they replace."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.network.transport import Transport
from mesh_llm.network.transport import _iroh_async as iroh_async
from mesh_llm.network.transport import _iroh_direct as iroh_direct
from tests.unit.network.conftest import open_stream, use_generated_driver

STEP = 10.0


@pytest.fixture(params=["direct", "generated", "shipped"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the direct calls, with the generated methods under the inline driver,
    and with the bindings as shipped (their own driver: calls run as tasks on the loop)."""
    saved = iroh_direct._checked
    if request.param == "generated":
        iroh_direct._checked = False
    if request.param == "shipped":
        use_generated_driver(monkeypatch)
    try:
        yield str(request.param)
    finally:
        iroh_direct._checked = saved


async def test_the_installed_bindings_take_the_direct_path(
    pair: tuple[Transport, Transport],
) -> None:
    # A newer iroh whose entry points or encoding differ would turn this off (and fail here,
    # so that the module is looked at again); the generated methods keep working meanwhile.
    assert iroh_direct.available()


async def test_relay_thread_calls_carry_the_bytes_in_order(
    pair: tuple[Transport, Transport], path: str
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    messages = [b""] + [os.urandom(n) for n in (1, 3, 240, 4096, 70_000, 300_000)] * 4
    expected = b"".join(messages)
    received = bytearray()

    def reader() -> None:
        while chunk := inbound.read_blocking(65_536):
            received.extend(chunk)

    def writer() -> None:
        for message in messages:
            out.write_blocking(message)

    async with asyncio.timeout(STEP):
        reading = asyncio.ensure_future(asyncio.to_thread(reader))
        await asyncio.to_thread(writer)
        await out.finish()
        await reading
    assert bytes(received) == expected
    # the end stays the end (read from a thread: on the loop's own, a blocking call of the
    # fallback could never be answered)
    assert await asyncio.to_thread(inbound.read_blocking, 10) == b""
    assert not iroh_async._pending


async def test_a_write_to_a_stopped_stream_is_a_transport_error(
    pair: tuple[Transport, Transport], path: str
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    await inbound.stop()

    async def write_until_refused() -> None:
        for _ in range(1000):  # the STOP_SENDING arrives after a round trip
            await asyncio.to_thread(out.write_blocking, b"x" * 1000)
            await asyncio.sleep(0.01)

    async with asyncio.timeout(STEP):
        with pytest.raises(TransportError, match="stream write"):
            await write_until_refused()


async def test_a_cancelled_direct_read_leaves_the_stream_usable(
    pair: tuple[Transport, Transport], path: str
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    cancel = threading.Event()
    waiting = asyncio.ensure_future(asyncio.to_thread(inbound.read_blocking, 100, cancel))
    await asyncio.sleep(0.05)
    cancel.set()
    async with asyncio.timeout(STEP):
        with pytest.raises(TransportError, match="cancelled"):
            await waiting
        await out.write(b"after")
        assert await asyncio.to_thread(inbound.read_blocking, 100) == b"after"
    assert not iroh_async._pending


async def test_continuations_from_rust_threads_keep_their_thread_state(
    pair: tuple[Transport, Transport],
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    kept_before = set(iroh_async._kept_thread_states)
    reading = asyncio.ensure_future(asyncio.to_thread(inbound.read_blocking, 100))
    await asyncio.sleep(0.05)  # the read waits: Rust's thread answers it
    await out.write(b"x")
    async with asyncio.timeout(STEP):
        assert await reading == b"x"
    python_threads = {t.ident for t in threading.enumerate()}
    assert iroh_async._kept_thread_states
    # Thread idents are reused once a thread ends: a state kept by an earlier test for a Rust
    # thread that has since ended may share its ident with a Python thread started later. What
    # must hold is that no thread state kept during this read is a Python thread's.
    assert not (iroh_async._kept_thread_states - kept_before) & python_threads


async def test_a_read_that_times_out_takes_nothing(
    pair: tuple[Transport, Transport], path: str
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(inbound.read_blocking, 100, None, 0.02)
    messages = [b"%04d" % i for i in range(300)]
    received = bytearray()
    timeouts = 0

    def reader() -> None:  # most reads give up before their bytes come: none may be lost
        nonlocal timeouts
        while len(received) < 4 * len(messages):
            try:
                received.extend(inbound.read_blocking(65_536, None, 0.0005))
            except TimeoutError:
                timeouts += 1

    async with asyncio.timeout(STEP):
        reading = asyncio.ensure_future(asyncio.to_thread(reader))
        for message in messages:
            await out.write(message)
            await asyncio.sleep(0.002)
        await reading
    assert bytes(received) == b"".join(messages)
    assert timeouts > len(messages)
    assert not iroh_async._pending
