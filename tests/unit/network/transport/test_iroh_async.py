"""The inline-continuation driver for the iroh bindings' async calls, over real iroh on
loopback: answers ready at the first poll, answers that come later from Rust's threads,
cancellation, and many streams at once."""

from __future__ import annotations

import asyncio
import os

import pytest
from iroh import iroh_ffi

from mesh_llm.network.transport import BiStream, Transport
from mesh_llm.network.transport import _iroh_async as iroh_async
from mesh_llm.network.transport import _iroh_patch as iroh_patch
from tests.unit.network.conftest import open_stream, use_generated_driver

STEP = 10.0


@pytest.fixture
async def streams(pair: tuple[Transport, Transport]) -> tuple[BiStream, BiStream]:
    return await open_stream(*pair, b"!")


async def test_binding_a_transport_installs_it() -> None:
    await (await Transport.bind(no_relay=True, bind_ip="127.0.0.1")).close()
    assert iroh_async.is_installed()
    assert iroh_ffi._uniffi_rust_call_async is iroh_async._call_async
    assert not iroh_async.needs_install()
    assert not iroh_async.install()  # idempotent


async def test_ready_and_later_answers_carry_the_bytes_in_order(
    streams: tuple[BiStream, BiStream],
) -> None:
    out, inbound = streams
    messages = [os.urandom(n) for n in (1, 240, 4096, 70_000)] * 25
    before = len(iroh_async._pending)

    async def reader() -> bytes:
        got = bytearray()
        while len(got) < sum(map(len, messages)):
            got += await inbound.read(1 << 16)  # often waits: answered from Rust's threads
        return bytes(got)

    async with asyncio.timeout(STEP):
        task = asyncio.ensure_future(reader())
        for i, message in enumerate(messages):
            await out.write(message)  # mostly ready at the first poll: answered inline
            if i % 10 == 0:
                await asyncio.sleep(0.001)
        assert await task == b"".join(messages)
    assert len(iroh_async._pending) == before


async def test_a_cancelled_read_leaves_the_stream_usable(
    streams: tuple[BiStream, BiStream],
) -> None:
    out, inbound = streams
    async with asyncio.timeout(STEP):
        waiting = asyncio.ensure_future(inbound.read(100))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await out.write(b"after")
        assert await inbound.read_exact(5) == b"after"


async def test_many_streams_at_once(streams: tuple[BiStream, BiStream]) -> None:
    out, inbound = streams
    payload = os.urandom(256)

    async def echo(i: int) -> None:
        await out.write(bytes([i]) + payload)

    async with asyncio.timeout(STEP):
        await asyncio.gather(*(echo(i) for i in range(200)))
        got = await inbound.read_exact(200 * 257)
    firsts = sorted(got[i * 257] for i in range(200))
    assert firsts == list(range(200))


async def test_bindings_without_a_name_it_uses_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_generated_driver(monkeypatch)
    assert iroh_async.needs_install()  # the bindings as shipped: it would install
    monkeypatch.delattr(iroh_ffi, "_UNIFFI_GLOBAL_EVENT_LOOP")
    assert not iroh_async.needs_install()


async def test_with_the_fast_path_off_binding_leaves_the_bindings_as_shipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_generated_driver(monkeypatch)
    monkeypatch.setattr(iroh_async, "install", lambda: pytest.fail("installed"))
    monkeypatch.setattr(iroh_patch, "apply", lambda: pytest.fail("patched"))
    await (await Transport.bind(no_relay=True, bind_ip="127.0.0.1", patch_bindings=False)).close()
    assert not iroh_async.is_installed()


async def test_binding_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MESH_LLM_IROH_FAST`` is the CLI's to read (``NodeConfig.iroh_fast``), not the transport."""
    use_generated_driver(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(iroh_async, "install", lambda: calls.append("install") or False)
    monkeypatch.setattr(iroh_patch, "apply", lambda: calls.append("apply") or False)
    monkeypatch.setenv("MESH_LLM_IROH_FAST", "0")
    await (await Transport.bind(no_relay=True, bind_ip="127.0.0.1")).close()
    assert calls == ["apply", "install"]


async def test_the_fallback_refuses_to_block_its_own_loop(
    streams: tuple[BiStream, BiStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, inbound = streams
    use_generated_driver(monkeypatch)
    with pytest.raises(RuntimeError, match="event loop's thread"):
        inbound.read_blocking(10)
