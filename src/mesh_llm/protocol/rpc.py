"""llama.cpp RPC as the mesh tunnel sees it. Sans-IO.

Pinned llama.cpp (commit 0c1e570, ``ggml/src/ggml-rpc/ggml-rpc.cpp``), RPC protocol 7.0.0:

- request (client -> server): ``cmd u8 | size u64 LE | payload[size]``; HELLO comes first.
- reply (server -> client), only for the commands in :data:`COMMANDS_WITH_REPLY`:
  ``size u64 LE | payload[size]``. ``SET_TENSOR`` has **no** reply (``rpc_serve_client`` only
  ``recv_msg``\\ s it), so replacing one by something else never leaves a reply to swallow.
- ``SET_TENSOR`` payload: ``rpc_tensor (296 B) | cache_flag u8 | offset u64 | data``.
- the server closes the connection on any command byte ``>= RPC_CMD_COUNT`` (19).

mesh-llm's private frames (:mod:`.rpc_mesh`) use command bytes from ``0xF0`` on
(:class:`MeshCommand`), which llama.cpp never sends; they never reach a real rpc-server, the
worker end of the tunnel expands them first.

Memory: :class:`RpcFrameParser` buffers at most a frame header plus a prefix of
:data:`MAX_PREFIX` bytes; payloads stream through in the pieces they arrived in.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mesh_llm.errors import ProtocolError

__all__ = [
    "COMMANDS_WITH_REPLY",
    "FRAME_END",
    "FRAME_HEADER_SIZE",
    "HELLO_REQUEST_SIZE",
    "MAX_PREFIX",
    "PRIVATE_FRAME_PREFIX",
    "RPC_PROTO_VERSION",
    "RPC_TENSOR_SIZE",
    "SET_TENSOR_HEAD_SIZE",
    "FrameBody",
    "FrameEnd",
    "FrameStart",
    "MeshCommand",
    "RpcCodecError",
    "RpcCommand",
    "RpcEvent",
    "RpcFrameParser",
    "RpcTensor",
    "SetTensorHead",
    "command_name",
    "decode_rpc_tensor",
    "decode_set_tensor_head",
    "encode_frame_header",
    "encode_rpc_tensor",
    "encode_set_tensor_header",
    "request_prefix_len",
    "set_tensor_name",
    "set_tensor_offset",
    "tunnel_prefix_len",
]

RPC_PROTO_VERSION: Final = (7, 0, 0)
"""``RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION`` of the pinned ``ggml-rpc.h``."""


class RpcCommand(enum.IntEnum):
    """``enum rpc_cmd`` of the pinned source, in order."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17
    NONE = 18  # client-internal marker, never on the wire


class MeshCommand(enum.IntEnum):
    """mesh-llm's private frames between the two ends of a tunnel (never seen by llama.cpp)."""

    TENSOR_REF = 0xF0
    TENSOR_STORE = 0xF1


COMMANDS_WITH_REPLY: Final = frozenset(
    {
        RpcCommand.ALLOC_BUFFER,
        RpcCommand.GET_ALIGNMENT,
        RpcCommand.GET_MAX_SIZE,
        RpcCommand.BUFFER_GET_BASE,
        RpcCommand.SET_TENSOR_HASH,
        RpcCommand.GET_TENSOR,
        RpcCommand.COPY_TENSOR,
        RpcCommand.GET_DEVICE_MEMORY,
        RpcCommand.GET_ALLOC_SIZE,
        RpcCommand.HELLO,
        RpcCommand.DEVICE_COUNT,
    }
)
"""Commands ``rpc_serve_client`` answers: each is one round trip across the tunnel."""

FRAME_HEADER_SIZE: Final = 9
HELLO_REQUEST_SIZE: Final = 24  # rpc_msg_hello_req: conn_caps[RPC_CONN_CAPS_SIZE]
GGML_MAX_DIMS: Final = 4
GGML_MAX_OP_PARAMS_I32: Final = 16  # GGML_MAX_OP_PARAMS (64 bytes) / sizeof(int32_t)
GGML_MAX_SRC: Final = 10
GGML_MAX_NAME: Final = 64

_FRAME_HEADER = struct.Struct("<BQ")
_RPC_TENSOR = struct.Struct(
    f"<QIQ{GGML_MAX_DIMS}I{GGML_MAX_DIMS}II{GGML_MAX_OP_PARAMS_I32}ii"
    f"{GGML_MAX_SRC}QQQQ{GGML_MAX_NAME}si"
)
RPC_TENSOR_SIZE: Final = _RPC_TENSOR.size
assert RPC_TENSOR_SIZE == 296, "rpc_tensor layout drifted from the pinned llama.cpp"
_SET_TENSOR_TAIL = struct.Struct("<BQ")  # cache_flag, offset
SET_TENSOR_HEAD_SIZE: Final = RPC_TENSOR_SIZE + _SET_TENSOR_TAIL.size  # 305
PRIVATE_FRAME_PREFIX: Final = 20 + SET_TENSOR_HEAD_SIZE  # 325: part, file_offset, length, head
MAX_PREFIX: Final = 512
"""Largest prefix any policy may ask :class:`RpcFrameParser` to gather."""


class RpcCodecError(ProtocolError):
    """Malformed RPC-tunnel bytes (private frame, preamble) from the other end."""


def command_name(cmd: int) -> str:
    """``SET_TENSOR``, ``TENSOR_REF``, or ``0x..`` for a byte neither side defines."""
    if cmd in RpcCommand._value2member_map_:
        return RpcCommand(cmd).name
    if cmd in MeshCommand._value2member_map_:
        return MeshCommand(cmd).name
    return f"0x{cmd:02x}"


# ------------------------------------------------------------------------------------ structs


@dataclass(frozen=True, slots=True)
class RpcTensor:
    """``struct rpc_tensor`` (packed, 296 bytes). ``name`` is the raw bytes before the first NUL."""

    id: int
    type: int
    buffer: int
    ne: tuple[int, ...]
    nb: tuple[int, ...]
    op: int
    op_params: tuple[int, ...]
    flags: int
    src: tuple[int, ...]
    view_src: int
    view_offs: int
    data: int
    name: bytes
    use_count: int


def decode_rpc_tensor(buf: bytes, offset: int = 0) -> RpcTensor:
    """Decode one ``rpc_tensor`` at ``offset``; :class:`RpcCodecError` when too short."""
    if len(buf) - offset < RPC_TENSOR_SIZE:
        raise RpcCodecError(f"rpc_tensor needs {RPC_TENSOR_SIZE} bytes, got {len(buf) - offset}")
    v = _RPC_TENSOR.unpack_from(buf, offset)
    d, o, s = GGML_MAX_DIMS, GGML_MAX_OP_PARAMS_I32, GGML_MAX_SRC
    i = 3
    ne = tuple(v[i : i + d])
    nb = tuple(v[i + d : i + 2 * d])
    i += 2 * d
    op = v[i]
    op_params = tuple(v[i + 1 : i + 1 + o])
    i += 1 + o
    flags = v[i]
    src = tuple(v[i + 1 : i + 1 + s])
    i += 1 + s
    raw_name: bytes = v[i + 3]
    return RpcTensor(
        id=v[0],
        type=v[1],
        buffer=v[2],
        ne=ne,
        nb=nb,
        op=op,
        op_params=op_params,
        flags=flags,
        src=src,
        view_src=v[i],
        view_offs=v[i + 1],
        data=v[i + 2],
        name=raw_name.split(b"\0", 1)[0],
        use_count=v[i + 4],
    )


def encode_rpc_tensor(t: RpcTensor) -> bytes:
    """The 296 packed bytes of ``t`` (name NUL-padded; longer names are truncated to 63)."""
    return _RPC_TENSOR.pack(
        t.id,
        t.type,
        t.buffer,
        *t.ne,
        *t.nb,
        t.op,
        *t.op_params,
        t.flags,
        *t.src,
        t.view_src,
        t.view_offs,
        t.data,
        t.name[: GGML_MAX_NAME - 1],
        t.use_count,
    )


@dataclass(frozen=True, slots=True)
class SetTensorHead:
    """The fixed head of a ``SET_TENSOR`` payload; the data follows it."""

    tensor: RpcTensor
    cache_flag: int
    offset: int


def decode_set_tensor_head(prefix: bytes) -> SetTensorHead:
    if len(prefix) != SET_TENSOR_HEAD_SIZE:
        raise RpcCodecError(f"SET_TENSOR head is {SET_TENSOR_HEAD_SIZE} bytes, got {len(prefix)}")
    cache_flag, offset = _SET_TENSOR_TAIL.unpack_from(prefix, RPC_TENSOR_SIZE)
    return SetTensorHead(decode_rpc_tensor(prefix), cache_flag, offset)


_NAME_AT: Final = RPC_TENSOR_SIZE - 4 - GGML_MAX_NAME  # 228: name, then use_count
_OFFSET = struct.Struct("<Q")


def set_tensor_name(prefix: bytes) -> bytes:
    """The tensor name of a ``SET_TENSOR`` head, without decoding the rest (hot path)."""
    return prefix[_NAME_AT : _NAME_AT + GGML_MAX_NAME].split(b"\0", 1)[0]


def set_tensor_offset(prefix: bytes) -> int:
    """The ``offset`` field of a ``SET_TENSOR`` head."""
    return int(_OFFSET.unpack_from(prefix, RPC_TENSOR_SIZE + 1)[0])


def encode_frame_header(cmd: int, size: int) -> bytes:
    return _FRAME_HEADER.pack(cmd, size)


def encode_set_tensor_header(set_head: bytes, length: int) -> bytes:
    """Frame header + head of an ordinary ``SET_TENSOR`` carrying ``length`` data bytes."""
    return encode_frame_header(RpcCommand.SET_TENSOR, SET_TENSOR_HEAD_SIZE + length) + set_head


# -------------------------------------------------------------------------------- parser


@dataclass(frozen=True, slots=True)
class FrameStart:
    """A frame begins: ``header`` is its 9 bytes, ``prefix`` the first payload bytes the policy
    asked for (whole, never split); the rest of the payload follows as :class:`FrameBody`."""

    cmd: int
    size: int
    header: bytes
    prefix: bytes


@dataclass(frozen=True, slots=True)
class FrameBody:
    data: bytes


@dataclass(frozen=True, slots=True)
class FrameEnd:
    pass


FRAME_END: Final = FrameEnd()

RpcEvent = FrameStart | FrameBody | FrameEnd
PrefixPolicy = Callable[[int, int], int]


def request_prefix_len(cmd: int, size: int) -> int:
    """Host side: gather the head of every ``SET_TENSOR`` that has one."""
    if cmd == RpcCommand.SET_TENSOR and size >= SET_TENSOR_HEAD_SIZE:
        return SET_TENSOR_HEAD_SIZE
    return 0


def tunnel_prefix_len(cmd: int, size: int) -> int:
    """Worker side: the HELLO request and the fixed part of private frames."""
    if cmd == RpcCommand.HELLO and size == HELLO_REQUEST_SIZE:
        return HELLO_REQUEST_SIZE
    if cmd in (MeshCommand.TENSOR_REF, MeshCommand.TENSOR_STORE):
        return min(size, PRIVATE_FRAME_PREFIX)
    return 0


_HEADER, _PREFIX, _BODY = 0, 1, 2


class RpcFrameParser:
    """Incremental parser of a client -> server RPC byte stream (both ends of the tunnel).

    ``feed`` returns events in order; the concatenation of every ``header``, ``prefix`` and body
    ``data`` equals the bytes fed, less the :attr:`pending` bytes of a frame head still being
    gathered (they come out, in full, with its :class:`FrameStart`). A chunk that holds only
    payload is passed on as the same object (no copy). The parser never raises.
    """

    __slots__ = ("_buf", "_cmd", "_need", "_policy", "_remaining", "_size", "_state")

    def __init__(self, policy: PrefixPolicy = request_prefix_len) -> None:
        self._policy = policy
        self._state = _HEADER
        self._buf = bytearray()
        self._need = FRAME_HEADER_SIZE
        self._remaining = 0
        self._cmd = 0
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes fed but not yet in any event (a partial frame header or prefix)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[RpcEvent]:
        events: list[RpcEvent] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._state == _BODY:
                take = min(self._remaining, n - pos)
                events.append(FrameBody(data if take == n else data[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    events.append(FRAME_END)
                    self._state = _HEADER
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) < self._need:
                break
            if self._state == _HEADER:
                self._cmd, self._size = _FRAME_HEADER.unpack(self._buf)
                prefix_len = max(
                    0, min(self._policy(self._cmd, self._size), self._size, MAX_PREFIX)
                )
                if prefix_len:
                    self._state = _PREFIX
                    self._need = FRAME_HEADER_SIZE + prefix_len
                    continue
            self._start_frame(events)
        return events

    def _start_frame(self, events: list[RpcEvent]) -> None:
        raw = bytes(self._buf)
        events.append(
            FrameStart(self._cmd, self._size, raw[:FRAME_HEADER_SIZE], raw[FRAME_HEADER_SIZE:])
        )
        self._remaining = self._size - (len(raw) - FRAME_HEADER_SIZE)
        self._buf.clear()
        self._need = FRAME_HEADER_SIZE
        if self._remaining:
            self._state = _BODY
        else:
            events.append(FRAME_END)
            self._state = _HEADER
