"""The iroh transport adapter, over real iroh on loopback with relays disabled."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from mesh_llm.errors import ConfigError, PortInUseError, TransportError
from mesh_llm.network.transport import Transport, generate_key, load_or_create_key
from mesh_llm.protocol.token import EndpointAddrInfo, decode_token, encode_token
from tests.unit.network.conftest import connect

STEP = 10.0  # generous bound for any single loopback operation


async def _bind(**kwargs: object) -> Transport:
    return await Transport.bind(no_relay=True, bind_ip="127.0.0.1", **kwargs)  # type: ignore[arg-type]


async def test_connect_echo_and_identity(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    ab, ba = await connect(a, b)
    assert ab.remote_id == b.node_id
    assert ba.remote_id == a.node_id
    assert ba.remote_id_bytes == a.node_id_bytes
    assert len(a.node_id) == 64

    payload = os.urandom(1 << 20)
    async with asyncio.timeout(STEP):
        client = await ab.open_bi()
        await client.write(b"\x01" + payload)
        await client.finish()
        server = await ba.accept_bi()
        assert await server.read_exact(1) == b"\x01"
        received = await server.read_to_end(2 << 20)
        assert received == payload
        assert await server.read(10) == b""
        await server.write(received[:1000])
        await server.finish()
        echoed = b""
        while chunk := await client.read(300):
            assert len(chunk) <= 300
            echoed += chunk
        assert echoed == payload[:1000]
        await client.aclose()
        await server.aclose()
    rtt = ab.rtt_ms()
    assert rtt is None or 0 <= rtt < 1000


async def test_read_exact_short_stream_is_a_transport_error(
    pair: tuple[Transport, Transport],
) -> None:
    a, b = pair
    ab, ba = await connect(a, b)
    async with asyncio.timeout(STEP):
        client = await ab.open_bi()
        await client.write(b"abc")
        await client.finish()
        await client.finish()  # idempotent
        server = await ba.accept_bi()
        with pytest.raises(TransportError, match="read_exact"):
            await server.read_exact(10)
        with pytest.raises(TransportError):
            await client.write(b"after finish")


async def test_read_to_end_is_bounded(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    ab, ba = await connect(a, b)
    async with asyncio.timeout(STEP):
        client = await ab.open_bi()
        await client.write(b"x" * 5000)
        await client.finish()
        server = await ba.accept_bi()
        with pytest.raises(TransportError):
            await server.read_to_end(4096)


async def test_token_round_trip_through_addr(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    addr = b.addr()
    assert addr.id_hex == b.node_id
    assert addr.relay_urls == ()
    assert addr.ip_addrs
    assert all(ip.startswith("127.0.0.1:") for ip in addr.ip_addrs)
    decoded = decode_token(encode_token(addr))
    assert decoded == addr
    async with asyncio.timeout(STEP):
        accepted = asyncio.ensure_future(b.accept())
        conn = await a.connect(decoded, timeout=STEP)
        assert conn.remote_id == b.node_id
        assert (await accepted).remote_id == a.node_id


async def test_peer_close_is_noticed_at_once(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    ab, ba = await connect(a, b)
    started = time.perf_counter()
    ba.close(7, "bye")
    async with asyncio.timeout(STEP):
        reason = await ab.closed()
    elapsed = time.perf_counter() - started
    assert "bye" in reason
    assert ab.is_closed
    assert ab.close_reason == reason
    assert elapsed < 2.0, f"graceful close took {elapsed:.3f}s"
    with pytest.raises(TransportError):
        await ab.open_bi()
    with pytest.raises(TransportError):
        await ab.accept_bi()
    assert await ab.probe(0.2) is False


async def test_endpoint_close_closes_connections_and_accept(
    pair: tuple[Transport, Transport],
) -> None:
    a, b = pair
    ab, _ = await connect(a, b)
    await b.close()
    assert b.is_closed
    async with asyncio.timeout(STEP):
        await ab.closed()
        with pytest.raises(TransportError):
            await b.accept()


async def test_probe_answers_for_a_live_peer(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    ab, _ba = await connect(a, b)
    assert await ab.probe(2.0) is True


PEER_SCRIPT = """
import asyncio
from mesh_llm.network.transport import Transport
from mesh_llm.protocol.token import encode_token

async def main():
    t = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    print(encode_token(t.addr()), flush=True)
    conn = await t.accept()
    print("accepted", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_killed_peer_is_detected_by_probe() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    local = await _bind()
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(STEP):
            token = (await proc.stdout.readline()).decode().strip()
            conn = await local.connect(decode_token(token), timeout=STEP)
            assert await proc.stdout.readline() == b"accepted\n"
        assert await conn.probe(2.0) is True
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        started = time.perf_counter()
        alive = await conn.probe(1.0)
        elapsed = time.perf_counter() - started
        assert alive is False
        assert elapsed < 1.5
        assert not conn.is_closed  # QUIC itself only notices after its idle timeout
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        await local.close()


async def test_bind_does_not_wait_for_unreachable_relays() -> None:
    started = time.perf_counter()
    t = await Transport.bind(relay_urls=["http://127.0.0.1:9/"], bind_ip="127.0.0.1")
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 2.0, f"bind took {elapsed:.3f}s"
        assert await t.wait_relay(0.2) is False
        assert t.addr().relay_urls == ()
    finally:
        await t.close()


async def test_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError):
            await Transport.bind(no_relay=True, bind_ip="127.0.0.1", bind_port=port)


async def test_connect_failures_are_transport_errors(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    with pytest.raises(TransportError, match="ourselves"):
        await a.connect(a.addr())
    stranger = await _bind()
    gone = stranger.addr()
    await stranger.close()
    with pytest.raises(TransportError, match="timed out"):
        await a.connect(gone, timeout=0.5)
    bogus = EndpointAddrInfo(b.node_id, (), ())
    with pytest.raises(TransportError):
        await a.connect(bogus, timeout=2.0)


async def test_secret_key_gives_a_stable_identity(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "state" / "key")
    path = tmp_path / "state" / "key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_or_create_key(path) == key
    first = await _bind(secret_key=key)
    node_id = first.node_id
    assert first.secret_key == key
    await first.close()
    second = await _bind(secret_key=key)
    try:
        assert second.node_id == node_id
    finally:
        await second.close()
    assert generate_key() != generate_key()
    assert len(generate_key()) == 32


def test_bad_key_files(tmp_path: Path) -> None:
    bad = tmp_path / "key"
    bad.write_text("zz" * 32)
    with pytest.raises(ConfigError):
        load_or_create_key(bad)
    bad.write_text("ab" * 31)
    with pytest.raises(ConfigError):
        load_or_create_key(bad)
    loose = tmp_path / "loose"
    loose.write_text("ab" * 32 + "\n")
    loose.chmod(0o644)
    assert load_or_create_key(loose) == bytes.fromhex("ab" * 32)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


async def test_bind_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        await Transport.bind(b"short", no_relay=True)
    with pytest.raises(ConfigError):
        await Transport.bind(no_relay=True, bind_port=70000)
