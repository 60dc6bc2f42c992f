"""llama.cpp RPC framing, rpc_tensor layout, private frames and the tunnel preamble."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.protocol.rpc import (
    COMMANDS_WITH_REPLY,
    PRIVATE_FRAME_PREFIX,
    RPC_TENSOR_SIZE,
    SET_TENSOR_HEAD_SIZE,
    FrameBody,
    FrameEnd,
    FrameStart,
    MeshCommand,
    RpcCodecError,
    RpcCommand,
    RpcEvent,
    RpcFrameParser,
    RpcTensor,
    command_name,
    decode_rpc_tensor,
    decode_set_tensor_head,
    encode_frame_header,
    encode_rpc_tensor,
    request_prefix_len,
    set_tensor_name,
    set_tensor_offset,
    tunnel_prefix_len,
)
from mesh_llm.protocol.rpc_mesh import (
    HOST_PREAMBLE_SIZE,
    WORKER_PREAMBLE_HEAD_SIZE,
    Extent,
    Holding,
    Holdings,
    HostPreamble,
    TensorRef,
    WorkerPreamble,
    decode_host_preamble,
    decode_tensor_ref,
    decode_worker_extents,
    decode_worker_preamble_head,
    encode_host_preamble,
    encode_store_header,
    encode_tensor_ref,
    encode_worker_preamble,
    merge_extents,
)


def tensor(name: bytes = b"blk.0.attn_q.weight", data: int = 0x7F00_0000_1000) -> RpcTensor:
    return RpcTensor(
        id=0x55AA_0000_0001,
        type=2,
        buffer=0x7F00_0000_0000,
        ne=(576, 576, 1, 1),
        nb=(20, 360, 207360, 207360),
        op=0,
        op_params=tuple(range(16)),
        flags=1,
        src=tuple(range(100, 110)),
        view_src=0,
        view_offs=0,
        data=data,
        name=name,
        use_count=3,
    )


def set_head(t: RpcTensor | None = None, cache_flag: int = 0, offset: int = 0) -> bytes:
    return encode_rpc_tensor(t or tensor()) + struct.pack("<BQ", cache_flag, offset)


# ------------------------------------------------------------------------ rpc_tensor layout


def test_rpc_tensor_has_the_pinned_packed_layout() -> None:
    raw = encode_rpc_tensor(tensor())
    assert len(raw) == RPC_TENSOR_SIZE == 296
    # Offsets in the packed struct rpc_tensor: id 0, type 8, buffer 12, ne 20, nb 36, op 52,
    # op_params 56, flags 120, src 124, view_src 204, view_offs 212, data 220, name 228,
    # use_count 292
    assert struct.unpack_from("<Q", raw, 0)[0] == 0x55AA_0000_0001
    assert struct.unpack_from("<I", raw, 8)[0] == 2
    assert struct.unpack_from("<Q", raw, 12)[0] == 0x7F00_0000_0000
    assert struct.unpack_from("<4I", raw, 20) == (576, 576, 1, 1)
    assert struct.unpack_from("<4I", raw, 36) == (20, 360, 207360, 207360)
    assert struct.unpack_from("<16i", raw, 56) == tuple(range(16))
    assert struct.unpack_from("<i", raw, 120)[0] == 1
    assert struct.unpack_from("<10Q", raw, 124) == tuple(range(100, 110))
    assert struct.unpack_from("<Q", raw, 220)[0] == 0x7F00_0000_1000
    assert raw[228:247] == b"blk.0.attn_q.weight"
    assert raw[247:292] == bytes(45)
    assert struct.unpack_from("<i", raw, 292)[0] == 3
    assert decode_rpc_tensor(raw) == tensor()


def test_set_tensor_head() -> None:
    head = decode_set_tensor_head(set_head(cache_flag=1, offset=4096))
    assert head.tensor.name == b"blk.0.attn_q.weight"
    assert (head.cache_flag, head.offset) == (1, 4096)
    assert set_tensor_name(set_head(cache_flag=1, offset=4096)) == b"blk.0.attn_q.weight"
    assert set_tensor_offset(set_head(cache_flag=1, offset=4096)) == 4096
    long_name = tensor(name=b"n" * 70)
    assert set_tensor_name(set_head(long_name)) == b"n" * 63  # GGML_MAX_NAME - 1
    with pytest.raises(RpcCodecError):
        decode_set_tensor_head(b"\0" * 100)
    with pytest.raises(RpcCodecError):
        decode_rpc_tensor(b"\0" * 295)


def test_commands_with_reply_follow_rpc_serve_client() -> None:
    no_reply = {
        RpcCommand.SET_TENSOR,
        RpcCommand.FREE_BUFFER,
        RpcCommand.BUFFER_CLEAR,
        RpcCommand.MEMSET_TENSOR,
        RpcCommand.INIT_TENSOR,
        RpcCommand.GRAPH_COMPUTE,
        RpcCommand.GRAPH_RECOMPUTE,
    }
    assert RpcCommand.SET_TENSOR not in COMMANDS_WITH_REPLY
    wire = set(RpcCommand) - {RpcCommand.NONE}
    assert wire - no_reply == COMMANDS_WITH_REPLY
    assert RpcCommand.HELLO == 14
    assert command_name(6) == "SET_TENSOR"
    assert command_name(0xF0) == "TENSOR_REF"
    assert command_name(0x99) == "0x99"


# ------------------------------------------------------------------------------ frame parser


def frames_of(events: list[RpcEvent]) -> list[tuple[int, int, bytes, bytes]]:
    out: list[tuple[int, int, bytes, bytes]] = []
    for e in events:
        match e:
            case FrameStart(cmd, size, _header, prefix):
                out.append((cmd, size, prefix, b""))
            case FrameBody(data):
                cmd, size, prefix, body = out[-1]
                out[-1] = (cmd, size, prefix, body + data)
            case FrameEnd():
                pass
    return out


def test_parser_splits_frames_and_gathers_set_tensor_heads() -> None:
    hello = encode_frame_header(RpcCommand.HELLO, 24) + bytes(24)
    st_payload = set_head(offset=8) + b"DATA" * 10
    set_tensor = encode_frame_header(RpcCommand.SET_TENSOR, len(st_payload)) + st_payload
    empty = encode_frame_header(RpcCommand.DEVICE_COUNT, 0)
    stream = hello + set_tensor + empty
    parser = RpcFrameParser(request_prefix_len)
    events: list[RpcEvent] = []
    for i in range(len(stream)):  # one byte at a time: the worst chunking
        events += parser.feed(stream[i : i + 1])
    assert parser.pending == 0
    assert frames_of(events) == [
        (RpcCommand.HELLO, 24, b"", bytes(24)),
        (RpcCommand.SET_TENSOR, len(st_payload), st_payload[:305], b"DATA" * 10),
        (RpcCommand.DEVICE_COUNT, 0, b"", b""),
    ]
    assert sum(isinstance(e, FrameEnd) for e in events) == 3


def test_parser_passes_a_payload_only_chunk_without_copying() -> None:
    parser = RpcFrameParser()
    parser.feed(encode_frame_header(RpcCommand.GRAPH_COMPUTE, 1 << 20))
    chunk = b"x" * 65536
    events = parser.feed(chunk)
    assert len(events) == 1
    assert isinstance(events[0], FrameBody)
    assert events[0].data is chunk


def test_tunnel_policy_gathers_hello_and_private_prefixes() -> None:
    assert tunnel_prefix_len(RpcCommand.HELLO, 24) == 24
    assert tunnel_prefix_len(RpcCommand.HELLO, 25) == 0
    assert tunnel_prefix_len(MeshCommand.TENSOR_REF, 325) == PRIVATE_FRAME_PREFIX
    assert tunnel_prefix_len(MeshCommand.TENSOR_STORE, 10) == 10
    assert tunnel_prefix_len(RpcCommand.SET_TENSOR, 10_000) == 0
    assert request_prefix_len(RpcCommand.SET_TENSOR, 10_000) == SET_TENSOR_HEAD_SIZE
    assert request_prefix_len(RpcCommand.SET_TENSOR, 304) == 0


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_parser_never_raises_and_loses_no_byte(data: bytes, cuts: list[int]) -> None:
    for policy in (request_prefix_len, tunnel_prefix_len):
        parser = RpcFrameParser(policy)
        out = bytearray()
        bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        for a, b in itertools.pairwise(bounds):
            for e in parser.feed(data[a:b]):
                match e:
                    case FrameStart(_, _, header, prefix):
                        out += header + prefix
                    case FrameBody(chunk):
                        out += chunk
                    case FrameEnd():
                        pass
        assert bytes(out) == data[: len(data) - parser.pending]


# ----------------------------------------------------------------------------- private frames


def test_tensor_ref_golden_bytes_and_round_trip() -> None:
    ref = TensorRef(part=1, file_offset=0x1000, length=0x2000, set_head=set_head())
    raw = encode_tensor_ref(ref)
    assert raw[:9] == bytes.fromhex("f04501000000000000")
    assert raw[9:29] == bytes.fromhex("0100000000100000000000000020000000000000")
    assert len(raw) == 9 + 325
    assert decode_tensor_ref(0xF0, 325, raw[9:]) == ref
    store = encode_store_header(ref)
    assert store[:9] == encode_frame_header(0xF1, 325 + 0x2000)
    assert decode_tensor_ref(0xF1, 325 + 0x2000, store[9:]) == ref


@pytest.mark.parametrize(
    ("cmd", "size", "fields"),
    [
        (0xF0, 326, (0, 0, 10)),  # REF with trailing data
        (0xF1, 325 + 9, (0, 0, 10)),  # STORE size disagrees with length
        (0xF0, 325, (0, 0, 0)),  # empty
        (0xF0, 325, (5000, 0, 10)),  # absurd part
        (0xF0, 325, (0, (1 << 50) - 5, 10)),  # past any file
        (0x06, 325, (0, 0, 10)),  # not private
    ],
)
def test_bad_private_frames_are_codec_errors(
    cmd: int, size: int, fields: tuple[int, int, int]
) -> None:
    prefix = struct.pack("<IQQ", *fields) + set_head()
    with pytest.raises(RpcCodecError):
        decode_tensor_ref(cmd, size, prefix)
    with pytest.raises(RpcCodecError):
        decode_tensor_ref(0xF0, 325, prefix[:100])


# ----------------------------------------------------------------------------------- preamble


def test_host_preamble_round_trip_and_garbage() -> None:
    identity = bytes(range(32))
    raw = encode_host_preamble(HostPreamble(identity))
    assert len(raw) == HOST_PREAMBLE_SIZE == 40
    assert raw[:6] == b"MLRP\x01\x00"
    assert decode_host_preamble(raw) == HostPreamble(identity)
    assert decode_host_preamble(encode_host_preamble(HostPreamble(None))).identity is None
    with pytest.raises(RpcCodecError, match="not a mesh-llm RPC tunnel preamble"):
        decode_host_preamble(encode_frame_header(14, 24) + bytes(31))
    with pytest.raises(RpcCodecError):
        decode_host_preamble(raw[:39])
    assert decode_host_preamble(b"MLRP\x02" + raw[5:]).version == 2


def test_worker_preamble_round_trip() -> None:
    extents = (Extent(0, 0, 100), Extent(1, 4096, 8192))
    raw = encode_worker_preamble(WorkerPreamble(Holding.STORE, True, extents))
    head, count = decode_worker_preamble_head(raw[:WORKER_PREAMBLE_HEAD_SIZE])
    assert (head.holding, head.accepts_store, count) == (Holding.STORE, True, 2)
    assert decode_worker_extents(raw[WORKER_PREAMBLE_HEAD_SIZE:], count) == extents
    with pytest.raises(RpcCodecError):
        decode_worker_preamble_head(b"MLRQ" + raw[4:12])
    with pytest.raises(RpcCodecError):
        decode_worker_preamble_head(raw[:4] + b"\x01\x09" + raw[6:12])  # unknown holding
    with pytest.raises(RpcCodecError):
        decode_worker_preamble_head(raw[:8] + struct.pack("<I", 1 << 30))
    with pytest.raises(RpcCodecError):
        decode_worker_extents(raw[12:30], 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_only_ever_raises_the_codec_error(raw: bytes) -> None:
    for call in (
        lambda: decode_host_preamble(raw[:HOST_PREAMBLE_SIZE]),
        lambda: decode_worker_preamble_head(raw[:WORKER_PREAMBLE_HEAD_SIZE]),
        lambda: decode_worker_extents(raw[: (len(raw) // 20) * 20], len(raw) // 20),
        lambda: decode_tensor_ref(raw[0] if raw else 0xF0, len(raw), raw[:PRIVATE_FRAME_PREFIX]),
        lambda: decode_set_tensor_head(raw[:SET_TENSOR_HEAD_SIZE]),
    ):
        with contextlib.suppress(RpcCodecError):
            call()


# ------------------------------------------------------------------------------------ extents


def test_merge_extents_and_holdings() -> None:
    merged = merge_extents([Extent(0, 10, 10), Extent(0, 0, 10), Extent(0, 30, 5), Extent(1, 0, 1)])
    assert merged == [Extent(0, 0, 20), Extent(0, 30, 5), Extent(1, 0, 1)]
    holdings = Holdings(merged)
    assert holdings.covers(0, 5, 15)
    assert not holdings.covers(0, 5, 16)
    assert not holdings.covers(0, 20, 1)
    assert holdings.covers(0, 30, 5)
    assert not holdings.covers(2, 0, 1)
    assert not holdings.covers(0, 0, 0)
    assert holdings.total() == 26
    assert not Holdings()
