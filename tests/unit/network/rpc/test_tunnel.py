"""Both tunnel ends over an in-process stream pair; fake rpc-server, fake llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.models.rpc_store import RpcStore
from mesh_llm.network.rpc.tunnel import RpcTunnelHost, WorkerSources, serve_rpc_tunnel
from mesh_llm.protocol.rpc import (
    COMMANDS_WITH_REPLY,
    FrameStart,
    RpcCommand,
    RpcFrameParser,
    RpcTensor,
    encode_frame_header,
    encode_rpc_tensor,
)
from mesh_llm.protocol.rpc_mesh import (
    Holding,
    HostPreamble,
    TensorRef,
    WorkerPreamble,
    encode_host_preamble,
    encode_tensor_ref,
    encode_worker_preamble,
)
from mesh_llm.protocol.rpc_splice import HostWeights, RpcTunnelStats, TensorLocation
from tests.fakes.fake_stream import PipeStream, stream_pair

pytestmark = pytest.mark.timeout(30)

DATA = random.Random(3).randbytes(300_000)
TENSORS = {b"w0": TensorLocation(0, 4_096, 100_000), b"w1": TensorLocation(0, 120_000, 150_000)}
IDENTITY = bytes(range(32))


def frame(cmd: int, payload: bytes) -> bytes:
    return encode_frame_header(cmd, len(payload)) + payload


def set_tensor(name: bytes, offset: int, data: bytes) -> bytes:
    t = RpcTensor(
        1, 0, 0x10, (1, 1, 1, 1), (1,) * 4, 0, (0,) * 16, 0, (0,) * 10, 0, 0, 0x20, name, 0
    )
    return frame(RpcCommand.SET_TENSOR, encode_rpc_tensor(t) + struct.pack("<BQ", 0, offset) + data)


def weight(name: bytes) -> bytes:
    loc = TENSORS[name]
    return DATA[loc.offset : loc.offset + loc.size]


HELLO = frame(RpcCommand.HELLO, bytes(24))


class FakeRpcServer:
    """Records every byte; answers each command with a reply with 8 bytes of the command number."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.closed = asyncio.Event()

    async def __aenter__(self) -> FakeRpcServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        got = bytearray()
        self.received.append(b"")
        parser = RpcFrameParser()
        try:
            while data := await reader.read(65536):
                got += data
                self.received[-1] = bytes(got)
                for event in parser.feed(data):
                    if isinstance(event, FrameStart) and event.cmd in COMMANDS_WITH_REPLY:
                        writer.write(struct.pack("<QQ", 8, event.cmd))
                await writer.drain()
        finally:
            writer.close()
            self.closed.set()


@contextlib.asynccontextmanager
async def tunnel(
    rpc_port: int, weights: HostWeights | None, sources: WorkerSources
) -> AsyncIterator[tuple[RpcTunnelHost, RpcTunnelStats]]:
    worker_stats = RpcTunnelStats()
    tasks: set[asyncio.Task[None]] = set()

    async def open_stream() -> PipeStream:
        host_end, worker_end = stream_pair()
        tasks.add(
            asyncio.create_task(
                serve_rpc_tunnel(worker_end, rpc_port, sources, stats=worker_stats, label="h")
            )
        )
        return host_end

    async with RpcTunnelHost(open_stream, weights, label="w") as host:
        yield host, worker_stats
    await asyncio.gather(*tasks)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True when the tunnel closed llama-server's connection (EOF, or RST over unread bytes)."""
    try:
        return await asyncio.wait_for(reader.read(100), 5) == b""
    except ConnectionResetError:
        return True


async def client_exchange(port: int, request: bytes, replies: int) -> bytes:
    """A llama-server stand-in: send ``request``, read ``replies`` 16-byte replies, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.readexactly(16 * replies)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def weights(model_file: Path) -> HostWeights:
    return HostWeights(IDENTITY, (model_file,), (len(DATA),), TENSORS)


async def test_weights_stay_home_when_the_worker_has_the_file(
    model_file: Path, weights: HostWeights
) -> None:
    request = (
        HELLO
        + set_tensor(b"w0", 0, weight(b"w0"))
        + frame(RpcCommand.GET_ALIGNMENT, bytes(4))
        + set_tensor(b"w1", 0, weight(b"w1"))
        + frame(RpcCommand.GET_MAX_SIZE, bytes(4))
    )
    sources = WorkerSources(files={IDENTITY.hex(): (model_file,)})
    async with FakeRpcServer() as rpc, tunnel(rpc.port, weights, sources) as (host, wstats):
        answer = await client_exchange(host.port, request, 3)
        await asyncio.wait_for(rpc.closed.wait(), 5)
    assert answer == b"".join(struct.pack("<QQ", 8, c) for c in (14, 1, 2))
    assert rpc.received == [request]
    stats = host.stats
    assert stats.refs == wstats.refs == 2
    assert stats.bytes_saved == 250_000
    assert stats.bytes_sent < 2_000
    assert stats.round_trips == 3
    assert stats.holding == "file"
    assert stats.active == 0
    assert stats.connections == 1


async def test_store_on_first_load_reference_on_the_next(
    tmp_path: Path, weights: HostWeights
) -> None:
    request = HELLO + set_tensor(b"w0", 0, weight(b"w0")) + set_tensor(b"w1", 0, weight(b"w1"))
    store = RpcStore(tmp_path / "store", cap_bytes=10**6)
    async with FakeRpcServer() as rpc, tunnel(rpc.port, weights, WorkerSources(store=store)) as t:
        host, _ = t
        await client_exchange(host.port, request, 1)
        await asyncio.wait_for(rpc.closed.wait(), 5)
        first_sent = host.stats.bytes_sent
        rpc.closed.clear()
        await client_exchange(host.port, request, 1)
        await asyncio.wait_for(rpc.closed.wait(), 5)
    assert rpc.received == [request, request]
    assert first_sent > 250_000
    assert host.stats.bytes_sent - first_sent < 2_000
    assert host.stats.stores == 2
    assert host.stats.refs == 2
    assert store.usage() == 250_000
    reloaded = RpcStore(tmp_path / "store", cap_bytes=10**6)
    assert reloaded.usage() == 250_000  # persisted when the tunnel closed


async def test_plain_relay_without_weights_is_byte_exact() -> None:
    payload = random.Random(1).randbytes(200_000)
    request = HELLO + frame(RpcCommand.GRAPH_COMPUTE, payload) + frame(RpcCommand.DEVICE_COUNT, b"")
    async with FakeRpcServer() as rpc, tunnel(rpc.port, None, WorkerSources()) as (host, _):
        await client_exchange(host.port, request, 2)
        await asyncio.wait_for(rpc.closed.wait(), 5)
    assert rpc.received == [request]
    assert host.stats.frames == {"HELLO": 1, "GRAPH_COMPUTE": 1, "DEVICE_COUNT": 1}
    assert host.stats.holding == "none"


async def test_rpc_server_closing_closes_llama_servers_connection(weights: HostWeights) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with tunnel(port, weights, WorkerSources()) as (host, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(HELLO)
        assert await closed_by_peer(reader)
        writer.close()
    server.close()


async def test_worker_without_rpc_server_closes_the_tunnel(
    weights: HostWeights, caplog: pytest.LogCaptureFixture
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with tunnel(port, weights, WorkerSources()) as (host, wstats):
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(HELLO)
        assert await closed_by_peer(reader)
        writer.close()
    assert "rpc tunnel from h closed" in caplog.text
    assert wstats.active == 0


async def test_worker_rejects_a_garbage_preamble(caplog: pytest.LogCaptureFixture) -> None:
    host_end, worker_end = stream_pair()
    await host_end.write(HELLO + bytes(31))  # llama.cpp bytes where the preamble belongs
    caplog.set_level(logging.WARNING)
    await asyncio.wait_for(serve_rpc_tunnel(worker_end, 1, WorkerSources(), label="x"), 5)
    assert "not a mesh-llm RPC tunnel preamble" in caplog.text
    with pytest.raises(TransportError):
        await host_end.read(10)


async def test_worker_refuses_another_preamble_version(caplog: pytest.LogCaptureFixture) -> None:
    host_end, worker_end = stream_pair()
    await host_end.write(encode_host_preamble(HostPreamble(IDENTITY, version=9)))
    await asyncio.wait_for(serve_rpc_tunnel(worker_end, 1, WorkerSources(), label="x"), 5)
    reply = await host_end.read(12)
    assert reply[:6] == b"MLRP\x01\x03"  # our version, Holding.REFUSED
    assert "host speaks RPC tunnel preamble v9, this node v1" in caplog.text


async def test_host_reports_a_refusing_worker(
    weights: HostWeights, caplog: pytest.LogCaptureFixture
) -> None:
    async def refusing() -> PipeStream:
        host_end, worker_end = stream_pair()
        await worker_end.write(encode_worker_preamble(WorkerPreamble(Holding.REFUSED, version=2)))
        return host_end

    async with RpcTunnelHost(refusing, weights, label="w") as host:
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(HELLO)
        assert await closed_by_peer(reader)
        writer.close()
    assert "worker speaks RPC tunnel preamble v2, this node v1" in caplog.text
    assert host.stats.last_error


async def test_malformed_private_frame_closes_the_tunnel_not_the_node(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeRpcServer() as rpc:
        host_end, worker_end = stream_pair()
        sources = WorkerSources(files={IDENTITY.hex(): (model_file,)})
        task = asyncio.create_task(serve_rpc_tunnel(worker_end, rpc.port, sources, label="x"))
        await host_end.write(encode_host_preamble(HostPreamble(IDENTITY)))
        assert (await host_end.read_exact(12))[5] == Holding.FILE
        await host_end.read_exact(20)
        ref = TensorRef(0, len(DATA) - 10, 20, bytes(305))  # runs past the worker's file
        await host_end.write(HELLO + encode_tensor_ref(ref))
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(rpc.closed.wait(), 5)
    assert "does not hold" in caplog.text
    assert rpc.received[0] in (b"", HELLO)  # nothing of the bad frame reached the rpc-server


async def test_aclose_cuts_live_tunnels(weights: HostWeights) -> None:
    async with FakeRpcServer() as rpc, tunnel(rpc.port, weights, WorkerSources()) as (host, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(HELLO)
        await reader.readexactly(16)
        assert host.stats.active == 1
        await host.aclose()
        assert await closed_by_peer(reader)
        assert host.stats.active == 0
        writer.close()


async def test_a_model_file_shrinking_under_the_worker_closes_the_tunnel(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeRpcServer() as rpc:
        host_end, worker_end = stream_pair()
        sources = WorkerSources(files={IDENTITY.hex(): (model_file,)})
        task = asyncio.create_task(serve_rpc_tunnel(worker_end, rpc.port, sources, label="x"))
        await host_end.write(encode_host_preamble(HostPreamble(IDENTITY)))
        await host_end.read_exact(12 + 20)
        await asyncio.to_thread(model_file.write_bytes, DATA[:1000])
        await host_end.write(HELLO + encode_tensor_ref(TensorRef(0, 500, 5000, bytes(305))))
        await asyncio.wait_for(task, 5)
    assert "local model part 0 ended at 1000" in caplog.text
