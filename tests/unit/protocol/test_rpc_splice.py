"""Host and worker splicers together: whatever the chunking, the rpc-server gets the exact bytes."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.protocol.rpc import (
    MeshCommand,
    RpcCodecError,
    RpcCommand,
    RpcTensor,
    encode_frame_header,
    encode_rpc_tensor,
)
from mesh_llm.protocol.rpc_mesh import (
    Extent,
    Holdings,
    TensorRef,
    encode_tensor_ref,
)
from mesh_llm.protocol.rpc_splice import (
    FileSlice,
    HostSplicer,
    HostWeights,
    ReadRef,
    RpcTunnelStats,
    StoreBegin,
    StoreChunk,
    StoreDone,
    TensorLocation,
    WorkerSplicer,
)

FILE = random.Random(7).randbytes(200_000)
TENSORS = {
    b"t0": TensorLocation(0, 1_000, 30_000),
    b"t1": TensorLocation(0, 31_000, 50_000),
    b"t2": TensorLocation(0, 90_000, 100_000),
}
WEIGHTS = HostWeights(b"\x01" * 32, (Path("model.gguf"),), (len(FILE),), TENSORS)
FULL = Holdings([Extent(0, 0, len(FILE))])


def rpc_tensor(name: bytes) -> RpcTensor:
    return RpcTensor(
        1,
        2,
        0x7000,
        (4, 4, 1, 1),
        (1, 4, 16, 16),
        0,
        (0,) * 16,
        0,
        (0,) * 10,
        0,
        0,
        0x7100,
        name,
        0,
    )


def set_tensor(name: bytes, offset: int, data: bytes, cache_flag: int = 0) -> bytes:
    payload = encode_rpc_tensor(rpc_tensor(name)) + struct.pack("<BQ", cache_flag, offset) + data
    return encode_frame_header(RpcCommand.SET_TENSOR, len(payload)) + payload


def frame(cmd: int, payload: bytes) -> bytes:
    return encode_frame_header(cmd, len(payload)) + payload


def weight(name: bytes, offset: int = 0, length: int | None = None) -> bytes:
    loc = TENSORS[name]
    length = loc.size - offset if length is None else length
    return FILE[loc.offset + offset : loc.offset + offset + length]


HELLO = frame(RpcCommand.HELLO, bytes(24))


@dataclass
class Worker:
    """The worker's local bytes: its file (FILE) or a store it fills."""

    holdings: Holdings
    store: dict[int, bytearray] = field(default_factory=dict)
    stored: list[Extent] = field(default_factory=list)
    from_store: bool = False

    def read(self, ref: ReadRef) -> bytes:
        if self.from_store:
            return bytes(self.store[ref.part][ref.offset : ref.offset + ref.length])
        return FILE[ref.offset : ref.offset + ref.length]


def cut(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        out.append(data[pos : pos + n])
        pos += n
    return out


def run(
    stream: bytes,
    worker: Worker,
    *,
    accepts_store: bool = False,
    seed: int = 0,
    max_chunk: int = 70_000,
) -> tuple[bytes, bytes, RpcTunnelStats, RpcTunnelStats]:
    """Client bytes -> host splicer -> tunnel -> worker splicer -> rpc-server bytes."""
    rng = random.Random(seed)
    host_stats, worker_stats = RpcTunnelStats(), RpcTunnelStats()
    host = HostSplicer(WEIGHTS, [FILE], worker.holdings, accepts_store, host_stats)
    tunnel = bytearray()
    for chunk in cut(stream, rng, max_chunk):
        for piece in host.feed(chunk):
            if isinstance(piece, FileSlice):
                tunnel += FILE[piece.offset : piece.offset + piece.length]
            else:
                tunnel += piece
    splicer = WorkerSplicer(worker.holdings, worker_stats)
    out = bytearray()
    for chunk in cut(bytes(tunnel), rng, max_chunk):
        for item in splicer.feed(chunk):
            match item:
                case bytes():
                    out += item
                case ReadRef():
                    out += worker.read(item)
                case StoreBegin():
                    pass
                case StoreChunk(part, offset, data):
                    out += data
                    buf = worker.store.setdefault(part, bytearray())
                    if len(buf) < offset + len(data):
                        buf.extend(bytes(offset + len(data) - len(buf)))
                    buf[offset : offset + len(data)] = data
                case StoreDone(part, offset, length):
                    worker.stored.append(Extent(part, offset, length))
    return bytes(tunnel), bytes(out), host_stats, worker_stats


def test_matching_weights_become_references_when_the_worker_has_the_file() -> None:
    stream = (
        HELLO
        + set_tensor(b"t0", 0, weight(b"t0"), cache_flag=1)
        + frame(RpcCommand.GET_ALIGNMENT, b"\0" * 4)
        + set_tensor(b"t1", 4096, weight(b"t1", 4096, 8192))
        + set_tensor(b"t2", 0, weight(b"t2"))
    )
    tunnel, out, host, worker = run(stream, Worker(FULL))
    assert out == stream
    assert len(tunnel) < 3 * 400 + len(HELLO) + 13
    assert host.refs == worker.refs == 3
    assert host.bytes_saved == 30_000 + 8192 + 100_000
    assert host.frames == {"HELLO": 1, "SET_TENSOR": 3, "GET_ALIGNMENT": 1}
    assert host.round_trips == 2


def test_bytes_that_differ_from_the_file_pass_unchanged() -> None:
    corrupt = bytearray(weight(b"t1"))
    corrupt[33_333] ^= 0xFF
    stream = (
        HELLO
        + set_tensor(b"t1", 0, bytes(corrupt))  # right name, other bytes
        + set_tensor(b"inp_pos", 0, b"\x01" * 4000)  # not a tensor of the file
        + set_tensor(b"t0", 29_000, weight(b"t0", 29_000) + b"xx")  # runs past the tensor
        + frame(RpcCommand.SET_TENSOR, b"short")
        + frame(RpcCommand.GRAPH_COMPUTE, b"g" * 100_000)
    )
    for seed in range(5):
        tunnel, out, host, _ = run(stream, Worker(FULL), seed=seed, max_chunk=5000)
        assert out == stream
        assert tunnel == stream
        assert host.refs == 0


def test_store_then_reference_from_the_store() -> None:
    stream = HELLO + set_tensor(b"t0", 0, weight(b"t0")) + set_tensor(b"t2", 0, weight(b"t2"))
    worker = Worker(Holdings(), from_store=True)
    tunnel, out, host, wstats = run(stream, worker, accepts_store=True)
    assert out == stream
    assert host.stores == wstats.stores == 2
    assert host.bytes_stored == 130_000
    assert len(tunnel) > 130_000
    # next load: the worker announces what it stored
    again = Worker(Holdings(worker.stored), store=worker.store, from_store=True)
    tunnel2, out2, host2, _ = run(stream, again, accepts_store=True, seed=1)
    assert out2 == stream
    assert host2.refs == 2
    assert host2.stores == 0
    assert len(tunnel2) < 1000


def test_partial_holdings_mix_references_and_stores() -> None:
    loc = TENSORS[b"t1"]
    worker = Worker(Holdings([Extent(0, loc.offset, 10_000)]))
    stream = (
        HELLO
        + set_tensor(b"t1", 0, weight(b"t1", 0, 10_000))
        + set_tensor(b"t1", 10_000, weight(b"t1", 10_000))
    )
    _tunnel, out, host, _ = run(stream, worker, accepts_store=False)
    assert out == stream
    assert host.refs == 1  # the second range is not held and the worker keeps nothing


def test_hello_transport_caps_are_zeroed_on_the_worker() -> None:
    stream = frame(RpcCommand.HELLO, b"\x07" * 24) + frame(RpcCommand.DEVICE_COUNT, b"")
    _tunnel, out, _, _ = run(stream, Worker(FULL))
    assert out == HELLO + frame(RpcCommand.DEVICE_COUNT, b"")


def test_host_refuses_private_command_bytes_from_llama_server() -> None:
    host = HostSplicer(WEIGHTS, [FILE], FULL, False, RpcTunnelStats())
    with pytest.raises(RpcCodecError):
        host.feed(HELLO + frame(MeshCommand.TENSOR_REF, b"x" * 325))


def test_worker_refuses_references_to_bytes_it_does_not_hold() -> None:
    ref = TensorRef(0, 150_000, 60_000, encode_rpc_tensor(rpc_tensor(b"t2")) + bytes(9))
    splicer = WorkerSplicer(Holdings([Extent(0, 0, 200_000)]), RpcTunnelStats())
    with pytest.raises(RpcCodecError, match="does not hold"):
        splicer.feed(HELLO + encode_tensor_ref(ref))


FRAME_KINDS = st.one_of(
    st.tuples(
        st.just("weight"),
        st.sampled_from(sorted(TENSORS)),
        st.integers(0, 60_000),
        st.integers(1, 60_000),
        st.none() | st.integers(0, 60_000),
    ),
    st.tuples(st.just("other"), st.sampled_from([1, 4, 8, 10, 12, 16]), st.binary(max_size=600)),
    st.tuples(st.just("foreign_set"), st.binary(min_size=1, max_size=3000)),
)


def build(frames: list[tuple[object, ...]]) -> bytes:
    out = bytearray(HELLO)
    for kind in frames:
        match kind:
            case ("weight", str() | bytes() as name, int(off), int(length), flip):
                assert isinstance(name, bytes)
                size = TENSORS[name].size
                off = off % size
                length = min(length, size - off)
                data = bytearray(weight(name, off, length))
                if isinstance(flip, int):
                    data[flip % length] ^= 0x5A
                out += set_tensor(name, off, bytes(data))
            case ("other", int(cmd), bytes(payload)):
                out += frame(cmd, payload)
            case ("foreign_set", bytes(data)):
                out += set_tensor(b"inp_embd", 0, data)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(FRAME_KINDS, max_size=8),
    seed=st.integers(0, 1000),
    max_chunk=st.sampled_from([1, 7, 333, 4096, 65536]),
    holding=st.sampled_from(["file", "store", "none"]),
)
def test_any_stream_any_chunking_arrives_byte_exact(
    frames: list[tuple[object, ...]], seed: int, max_chunk: int, holding: str
) -> None:
    stream = build(frames)
    if max_chunk == 1 and len(stream) > 20_000:
        max_chunk = 97  # keep the byte-at-a-time cases small
    worker = Worker(FULL) if holding == "file" else Worker(Holdings(), from_store=True)
    _tunnel, out, _, _ = run(
        stream, worker, accepts_store=holding == "store", seed=seed, max_chunk=max_chunk
    )
    assert out == stream
    if holding == "store":  # and a second pass serves what was stored
        again = Worker(Holdings(worker.stored), store=worker.store, from_store=True)
        _t, out2, _, _ = run(stream, again, accepts_store=True, seed=seed + 1, max_chunk=max_chunk)
        assert out2 == stream


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=2000), seed=st.integers(0, 100))
def test_worker_splicer_on_garbage_raises_only_codec_errors(garbage: bytes, seed: int) -> None:
    splicer = WorkerSplicer(FULL, RpcTunnelStats())
    rng = random.Random(seed)
    # private frames with random fields are the interesting garbage
    stream = bytes([0xF0 + rng.randint(0, 1)]) + garbage if seed % 2 else garbage
    try:
        for chunk in cut(stream, rng, 300):
            splicer.feed(chunk)
    except RpcCodecError:
        pass
