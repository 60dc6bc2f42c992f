"""The relay loops in C (``native_relay``): real sockets, real iroh streams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from mesh_llm.network.relay import native as native_relay
from mesh_llm.network.relay.native import (
    NativeRelay,
    RelayCancelledError,
    RelaySinkError,
    RelaySourceError,
)
from mesh_llm.network.transport import (
    BiStream,
    FfiStreams,
    Transport,
    bindings_layout,
    ffi_streams,
)
from tests.unit.network.conftest import STEP, open_stream, use_generated_driver

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
    ),
]


@pytest.fixture
def relay() -> Iterator[NativeRelay]:
    assert native_relay.load(), native_relay.unavailable_reason()
    relay = NativeRelay()
    try:
        yield relay
    finally:
        relay.close()


def _chunks(total: int) -> list[bytes]:
    sizes = [1, 7, 100, 1500, 65_536, 70_000, 3]
    out, n, i = [], 0, 0
    while n < total:
        out.append(os.urandom(sizes[i % len(sizes)]))
        n += len(out[-1])
        i += 1
    return out


def _send_then_close(sock: socket.socket, chunks: list[bytes]) -> threading.Thread:
    def run() -> None:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _receive_all(sock: socket.socket) -> bytes:
    sock.settimeout(STEP)
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_socket_to_socket_relays_every_byte_in_order_and_observes_all_of_them(
    relay: NativeRelay,
) -> None:
    chunks = _chunks(3 << 20)
    expected = b"".join(chunks)
    source_in, source = socket.socketpair()
    sink, sink_out = socket.socketpair()
    observed = bytearray()
    feeder = _send_then_close(source_in, chunks)
    done, outcome = _in_thread(
        lambda: relay.socket_to_socket(source, sink, 1 << 16, observed.extend)
    )
    received = _receive_all_after(sink_out, done, sink)
    feeder.join(STEP)
    assert outcome == [None]
    assert received == expected
    assert bytes(observed) == expected
    for sock in (source_in, source, sink, sink_out):
        sock.close()


def _receive_all_after(sock: socket.socket, done: threading.Thread, sink: socket.socket) -> bytes:
    """Read ``sock`` while the relay runs; its sink end is shut once the relay returns."""
    data = bytearray()
    sock.settimeout(0.05)
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            if not done.is_alive():
                sink.shutdown(socket.SHUT_WR)
            continue
        if not chunk:
            break
        data += chunk
    done.join(STEP)
    return bytes(data)


def test_observe_that_raises_stops_the_relay_with_its_exception(relay: NativeRelay) -> None:
    source_in, source = socket.socketpair()
    sink, sink_out = socket.socketpair()
    source_in.sendall(b"data")
    source_in.shutdown(socket.SHUT_WR)

    def observe(_: bytes) -> None:
        raise ValueError("observer bug")

    with pytest.raises(ValueError, match="observer bug"):
        relay.socket_to_socket(source, sink, 1024, observe)
    for sock in (source_in, source, sink, sink_out):
        sock.close()


def test_a_sink_that_went_away_is_a_sink_error(relay: NativeRelay) -> None:
    source_in, source = socket.socketpair()
    sink, sink_out = socket.socketpair()
    sink_out.close()
    source_in.sendall(b"x" * 1000)
    with pytest.raises(RelaySinkError, match=r"Broken pipe|reset"):
        relay.socket_to_socket(source, sink, 1024, None)
    for sock in (source_in, source, sink):
        sock.close()


def test_a_silent_source_times_out_as_a_source_error(relay: NativeRelay) -> None:
    source_in, source = socket.socketpair()
    sink, sink_out = socket.socketpair()
    source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
    started = time.monotonic()
    with pytest.raises(RelaySourceError, match="temporarily unavailable"):
        relay.socket_to_socket(source, sink, 1024, None)
    assert time.monotonic() - started < STEP
    for sock in (source_in, source, sink, sink_out):
        sock.close()


def _stream_out(relay: NativeRelay, recv: object, sink: socket.socket, seen: bytearray) -> None:
    """stream_to_socket until the stream ends, sending what the socket did not take (already
    observed) the slow way, as the ingress's drain does."""
    while (rest := relay.stream_to_socket(recv, 1 << 16, sink, seen.extend)) is not None:
        sink.setblocking(True)
        sink.sendall(rest)
        sink.setblocking(False)


async def test_socket_to_stream_and_stream_to_socket_carry_every_byte(
    pair: tuple[Transport, Transport], relay: NativeRelay
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    chunks = _chunks(2 << 20)
    expected = b"".join(chunks)
    source_in, source = socket.socketpair()
    sink, sink_out = socket.socketpair()
    sink.setblocking(False)  # stream_to_socket sends without blocking
    back = NativeRelay()
    sent_seen, received_seen = bytearray(), bytearray()
    try:
        async with asyncio.timeout(STEP * 2):
            feeder = _send_then_close(source_in, chunks)
            into = asyncio.ensure_future(
                asyncio.to_thread(
                    relay.socket_to_stream, source, out.send_handle(), 1 << 16, sent_seen.extend
                )
            )
            outof = asyncio.ensure_future(
                asyncio.to_thread(_stream_out, back, inbound.recv_handle(), sink, received_seen)
            )
            reading = asyncio.ensure_future(asyncio.to_thread(_receive_all, sink_out))
            await into
            await out.finish()
            await outof
            sink.shutdown(socket.SHUT_WR)
            received = await reading
            feeder.join(STEP)
    finally:
        back.close()
        for sock in (source_in, source, sink, sink_out):
            sock.close()
    assert received == expected
    assert bytes(sent_seen) == expected
    assert bytes(received_seen) == expected


async def test_a_client_that_does_not_read_gets_the_rest_handed_back(
    pair: tuple[Transport, Transport], relay: NativeRelay
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    sink, sink_out = socket.socketpair()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sink.setblocking(False)
    payload = os.urandom(1 << 20)
    async with asyncio.timeout(STEP):
        await out.write(payload)
        rest = await asyncio.to_thread(
            relay.stream_to_socket, inbound.recv_handle(), 1 << 16, sink, None
        )
    assert rest  # the socket took part of a chunk: the rest comes back, nothing is lost
    sink.shutdown(socket.SHUT_WR)
    taken = _receive_all(sink_out)
    assert 0 < len(taken) < len(payload)
    assert taken + rest == payload[: len(taken) + len(rest)]
    sink.close()
    sink_out.close()


@contextlib.asynccontextmanager
async def _reading(
    relay: NativeRelay, inbound: BiStream
) -> AsyncIterator[tuple[asyncio.Future[bytes | None], socket.socket]]:
    """``relay.stream_to_socket`` from ``inbound`` running in a thread, and the socket its
    bytes come out of."""
    sink, sink_out = socket.socketpair()
    sink.setblocking(False)
    sink_out.settimeout(STEP)
    try:
        yield (
            asyncio.ensure_future(
                asyncio.to_thread(relay.stream_to_socket, inbound.recv_handle(), 1024, sink, None)
            ),
            sink_out,
        )
    finally:
        sink.close()
        sink_out.close()


async def test_a_reset_stream_is_a_source_error_with_the_reason(
    pair: tuple[Transport, Transport], relay: NativeRelay
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    async with asyncio.timeout(STEP), _reading(relay, inbound) as (reading, sink_out):
        await out.write(b"partial")
        assert await asyncio.to_thread(sink_out.recv, 100) == b"partial"
        await out.reset(7)
        with pytest.raises(RelaySourceError, match=re.escape("stream read: stream: Reset(7)")):
            await reading


async def test_a_stopped_stream_is_a_sink_error(
    pair: tuple[Transport, Transport], relay: NativeRelay
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    source_in, source = socket.socketpair()
    async with asyncio.timeout(STEP):
        await inbound.stop(3)
        writing = asyncio.ensure_future(
            asyncio.to_thread(relay.socket_to_stream, source, out.send_handle(), 1024, None)
        )
        for _ in range(200):  # the stop reaches the writer after a round trip
            source_in.sendall(b"more")
            await asyncio.sleep(0.01)
            if writing.done():
                break
        with pytest.raises(RelaySinkError, match=re.escape("stream write: stream: Stopped(3)")):
            await writing
    source_in.close()
    source.close()


async def test_cancel_ends_a_wait_for_the_stream_and_takes_nothing(
    pair: tuple[Transport, Transport], relay: NativeRelay
) -> None:
    out, inbound = await open_stream(*pair, b"!")
    async with asyncio.timeout(STEP), _reading(relay, inbound) as (waiting, _):
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        relay.cancel()
        with pytest.raises(RelayCancelledError):
            await waiting
        assert time.monotonic() - started < 1.0
        # the read given up consumed nothing: the next bytes all reach the next reader
        await out.write(b"after the cancel")
        await out.finish()
        assert await inbound.read_to_end(1024) == b"after the cancel"


def test_cancel_after_close_is_harmless() -> None:
    assert native_relay.load()
    relay = NativeRelay()
    relay.close()
    relay.cancel()
    relay.close()


def test_without_a_compiler_the_relays_stay_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native_relay, "_lib", None)
    monkeypatch.setattr(native_relay, "_failure", None)
    assert not native_relay.load()
    assert not native_relay.available()
    assert not native_relay.streams_available()
    assert "no-such-cc" in (native_relay.unavailable_reason() or "")
    with pytest.raises(RuntimeError, match="not loaded"):
        NativeRelay()


def test_a_failing_compile_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path))
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fatal: out of cheese' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(OSError, match="out of cheese"):
        native_relay.build()
    assert not list((tmp_path / "native").glob("*.so"))


def test_switched_off_it_stays_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_relay, "_lib", None)
    monkeypatch.setattr(native_relay, "_failure", None)
    native_relay.prepare(enabled=False)
    assert not native_relay.load()
    assert not native_relay.available()
    assert "MESH_LLM_NATIVE_RELAY=0" in (native_relay.unavailable_reason() or "")
    assert "switched off" in str(native_relay.status()["reason"])


def test_it_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MESH_LLM_NATIVE_RELAY`` is the CLI's to read (``NodeConfig.native_relay``)."""

    def build() -> Path:
        raise OSError("built")

    monkeypatch.setenv("MESH_LLM_NATIVE_RELAY", "0")
    monkeypatch.setattr(native_relay, "_lib", None)
    monkeypatch.setattr(native_relay, "_failure", None)
    monkeypatch.setattr(native_relay, "build", build)
    assert not native_relay.load()
    assert native_relay.unavailable_reason() == "built"  # it tried: the variable was not read


def test_the_build_is_cached_by_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path))
    stale = tmp_path / "native" / f"relay-0123456789abcdef-{platform.machine()}.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"built from an older source")
    first = native_relay.build()
    assert not stale.exists()  # replaced by the current build
    stamp = first.stat().st_mtime_ns
    assert native_relay.build() == first
    assert first.stat().st_mtime_ns == stamp  # not rebuilt


def test_the_source_compiles_without_warnings(tmp_path: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    command = native_relay.compile_command(compiler, tmp_path / "relay.so", werror=True)
    assert "-Wall" in command
    assert "-Wextra" in command
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_the_compiled_structs_match_the_bindings() -> None:
    assert native_relay.load(), native_relay.unavailable_reason()
    compiled = native_relay.compiled_layout(native_relay._lib)
    assert compiled == bindings_layout()
    assert native_relay.layout_mismatch(compiled, bindings_layout()) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("RustBuffer.len.offset", 4), ("RustCallStatus.size", 40), ("RustBuffer.data.size", 4)],
)
async def test_a_layout_the_library_was_not_built_for_keeps_the_streams_in_python(
    pair: tuple[Transport, Transport], monkeypatch: pytest.MonkeyPatch, key: str, value: int
) -> None:
    assert native_relay.load(), native_relay.unavailable_reason()
    offered = ffi_streams()
    assert offered is not None  # the fast path is on: the transport offers its stream calls
    changed = FfiStreams(offered.entry_points, {**offered.layout, key: value})
    monkeypatch.setattr(native_relay, "ffi_streams", lambda: changed)
    monkeypatch.setattr(native_relay, "_ffi", None)
    monkeypatch.setattr(native_relay, "_streams_failure", None)
    assert native_relay.available()  # the socket loop needs no bindings
    assert not native_relay.streams_available()
    status = native_relay.status()
    assert status["native"] is True
    assert status["native_streams"] is False
    assert f"{key} C " in str(status["streams_reason"])
    assert f"bindings {value}" in str(status["streams_reason"])
    relay = NativeRelay()
    try:
        with socket.socket() as source, pytest.raises(RuntimeError, match="not bound"):
            relay.socket_to_stream(source, 0, 1024, None)
    finally:
        relay.close()


async def test_without_the_fast_path_the_streams_stay_in_python(
    pair: tuple[Transport, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert native_relay.load(), native_relay.unavailable_reason()
    use_generated_driver(monkeypatch)
    monkeypatch.setattr(native_relay, "_ffi", None)
    assert ffi_streams() is None
    assert not native_relay.streams_available()
    assert "fast path" in str(native_relay.status()["streams_reason"])
