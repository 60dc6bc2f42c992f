"""mesh-llm's private side of an RPC tunnel: reference frames and the preamble. Sans-IO.

Private frames (command bytes from :class:`~.rpc.MeshCommand`, never sent by llama.cpp):

- ``0xF0`` TENSOR_REF, size 325: ``part u32 | file_offset u64 | length u64 | set_head (305 B)``.
  "Send this ``SET_TENSOR`` with ``length`` bytes read from part ``part`` of the model file at
  ``file_offset``". ``set_head`` is the original ``rpc_tensor | cache_flag | offset``.
- ``0xF1`` TENSOR_STORE, size 325 + length: the same fields, then ``length`` data bytes: "forward
  it as a ``SET_TENSOR`` and keep the bytes for next time".

Preamble: before any llama.cpp byte on a 0x02 stream, the host sends :class:`HostPreamble` (40 B:
magic ``MLRP``, version, the model's identity hash) and the worker answers
:class:`WorkerPreamble` (12 B head, then ``count`` extents of 20 B) saying which bytes of that
model it can read locally, and whether it keeps what it is sent.
"""

from __future__ import annotations

import bisect
import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from mesh_llm.protocol.rpc import (
    PRIVATE_FRAME_PREFIX,
    SET_TENSOR_HEAD_SIZE,
    MeshCommand,
    RpcCodecError,
    command_name,
    encode_frame_header,
)

__all__ = [
    "HOST_PREAMBLE_SIZE",
    "MAX_FILE_OFFSET",
    "MAX_PART",
    "MAX_PREAMBLE_EXTENTS",
    "PREAMBLE_MAGIC",
    "PREAMBLE_VERSION",
    "WORKER_PREAMBLE_HEAD_SIZE",
    "Extent",
    "Holding",
    "Holdings",
    "HostPreamble",
    "TensorRef",
    "WorkerPreamble",
    "decode_host_preamble",
    "decode_tensor_ref",
    "decode_worker_extents",
    "decode_worker_preamble_head",
    "encode_host_preamble",
    "encode_store_header",
    "encode_tensor_ref",
    "encode_worker_preamble",
    "merge_extents",
]

_REF_FIELDS = struct.Struct("<IQQ")  # part, file_offset, length
assert _REF_FIELDS.size + SET_TENSOR_HEAD_SIZE == PRIVATE_FRAME_PREFIX

MAX_PART: Final = 4096
"""Largest split-part index accepted (real split models have a few dozen parts)."""
MAX_FILE_OFFSET: Final = 1 << 50
"""Largest byte offset (1 PiB) a private frame or preamble extent may name."""


# ------------------------------------------------------------------------- private frames


@dataclass(frozen=True, slots=True)
class TensorRef:
    """``length`` bytes of model file part ``part`` at ``file_offset``, to be set with the
    original ``SET_TENSOR`` head ``set_head`` (305 bytes)."""

    part: int
    file_offset: int
    length: int
    set_head: bytes


def _ref_fields(ref: TensorRef) -> bytes:
    if len(ref.set_head) != SET_TENSOR_HEAD_SIZE:
        raise ValueError("set_head must be the 305-byte SET_TENSOR head")
    return _REF_FIELDS.pack(ref.part, ref.file_offset, ref.length) + ref.set_head


def encode_tensor_ref(ref: TensorRef) -> bytes:
    """A complete TENSOR_REF frame (334 bytes)."""
    return encode_frame_header(MeshCommand.TENSOR_REF, PRIVATE_FRAME_PREFIX) + _ref_fields(ref)


def encode_store_header(ref: TensorRef) -> bytes:
    """Header and fixed part of a TENSOR_STORE frame; ``ref.length`` data bytes must follow."""
    return encode_frame_header(
        MeshCommand.TENSOR_STORE, PRIVATE_FRAME_PREFIX + ref.length
    ) + _ref_fields(ref)


def decode_tensor_ref(cmd: int, size: int, prefix: bytes) -> TensorRef:
    """Validate a private frame's header and fixed part (from the network: never trusted)."""
    if len(prefix) != PRIVATE_FRAME_PREFIX:
        raise RpcCodecError(f"{command_name(cmd)} frame too short ({size} bytes)")
    part, file_offset, length = _REF_FIELDS.unpack_from(prefix)
    if cmd == MeshCommand.TENSOR_REF:
        if size != PRIVATE_FRAME_PREFIX:
            raise RpcCodecError(
                f"TENSOR_REF frame of {size} bytes, expected {PRIVATE_FRAME_PREFIX}"
            )
    elif cmd == MeshCommand.TENSOR_STORE:
        if size != PRIVATE_FRAME_PREFIX + length:
            raise RpcCodecError(f"TENSOR_STORE frame of {size} bytes does not carry {length}")
    else:
        raise RpcCodecError(f"not a private frame: {command_name(cmd)}")
    if part >= MAX_PART:
        raise RpcCodecError(f"{command_name(cmd)} names file part {part}")
    if length == 0 or file_offset + length > MAX_FILE_OFFSET:
        raise RpcCodecError(f"{command_name(cmd)} range {file_offset}+{length} is out of bounds")
    return TensorRef(part, file_offset, length, prefix[_REF_FIELDS.size :])


# ------------------------------------------------------------------------------- preamble

PREAMBLE_MAGIC: Final = b"MLRP"
PREAMBLE_VERSION: Final = 1
_HOST_PREAMBLE = struct.Struct("<4sBBH32s")
HOST_PREAMBLE_SIZE: Final = _HOST_PREAMBLE.size  # 40
_WORKER_HEAD = struct.Struct("<4sBBBBI")
WORKER_PREAMBLE_HEAD_SIZE: Final = _WORKER_HEAD.size  # 12
_EXTENT = struct.Struct("<IQQ")
MAX_PREAMBLE_EXTENTS: Final = 65536
_NO_IDENTITY = bytes(32)
_FLAG_STORES = 0x01


@dataclass(frozen=True, slots=True)
class HostPreamble:
    """What the host serves: the model's 32-byte identity hash, or None (plain relay)."""

    identity: bytes | None
    version: int = PREAMBLE_VERSION


def encode_host_preamble(preamble: HostPreamble) -> bytes:
    identity = preamble.identity if preamble.identity is not None else _NO_IDENTITY
    if len(identity) != 32:
        raise ValueError("identity must be 32 bytes")
    return _HOST_PREAMBLE.pack(PREAMBLE_MAGIC, preamble.version, 0, 0, identity)


def decode_host_preamble(raw: bytes) -> HostPreamble:
    """:class:`RpcCodecError` for anything but a preamble (any version: the caller decides)."""
    if len(raw) != HOST_PREAMBLE_SIZE:
        raise RpcCodecError(f"RPC tunnel preamble is {HOST_PREAMBLE_SIZE} bytes, got {len(raw)}")
    magic, version, _flags, _reserved, identity = _HOST_PREAMBLE.unpack(raw)
    if magic != PREAMBLE_MAGIC:
        raise RpcCodecError(f"not a mesh-llm RPC tunnel preamble (starts {raw[:8].hex()})")
    return HostPreamble(None if identity == _NO_IDENTITY else identity, version)


class Holding(enum.IntEnum):
    """What the worker holds of the host's model."""

    NONE = 0
    FILE = 1  # the GGUF itself (same identity hash): extents cover every part
    STORE = 2  # byte ranges a host sent before, kept in the worker's RPC store
    REFUSED = 3  # the worker does not speak the host's preamble version


@dataclass(frozen=True, slots=True)
class Extent:
    part: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class WorkerPreamble:
    holding: Holding
    accepts_store: bool = False
    extents: tuple[Extent, ...] = ()
    version: int = PREAMBLE_VERSION


def encode_worker_preamble(preamble: WorkerPreamble) -> bytes:
    extents = preamble.extents[:MAX_PREAMBLE_EXTENTS]
    flags = _FLAG_STORES if preamble.accepts_store else 0
    head = _WORKER_HEAD.pack(
        PREAMBLE_MAGIC, preamble.version, preamble.holding, flags, 0, len(extents)
    )
    return head + b"".join(_EXTENT.pack(e.part, e.offset, e.length) for e in extents)


def decode_worker_preamble_head(raw: bytes) -> tuple[WorkerPreamble, int]:
    """The reply's head as a preamble without extents, and how many extents follow."""
    if len(raw) != WORKER_PREAMBLE_HEAD_SIZE:
        raise RpcCodecError(f"worker preamble head is 12 bytes, got {len(raw)}")
    magic, version, holding, flags, _reserved, count = _WORKER_HEAD.unpack(raw)
    if magic != PREAMBLE_MAGIC:
        raise RpcCodecError(f"not a mesh-llm RPC tunnel reply (starts {raw[:8].hex()})")
    if holding not in Holding._value2member_map_:
        raise RpcCodecError(f"worker preamble with unknown holding {holding}")
    if count > MAX_PREAMBLE_EXTENTS:
        raise RpcCodecError(f"worker preamble announces {count} extents")
    return WorkerPreamble(Holding(holding), bool(flags & _FLAG_STORES), (), version), count


def decode_worker_extents(raw: bytes, count: int) -> tuple[Extent, ...]:
    if len(raw) != count * _EXTENT.size:
        raise RpcCodecError(f"{count} extents need {count * _EXTENT.size} bytes, got {len(raw)}")
    out: list[Extent] = []
    for part, offset, length in _EXTENT.iter_unpack(raw):
        if part >= MAX_PART or offset + length > MAX_FILE_OFFSET:
            raise RpcCodecError(f"worker preamble extent {part}:{offset}+{length} out of bounds")
        if length:
            out.append(Extent(part, offset, length))
    return tuple(out)


def merge_extents(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, with overlapping and touching extents of the same part merged."""
    out: list[Extent] = []
    for e in sorted(extents, key=lambda x: (x.part, x.offset)):
        if e.length <= 0:
            continue
        if out and out[-1].part == e.part and e.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.part, last.offset, max(last.end, e.end) - last.offset)
        else:
            out.append(e)
    return out


class Holdings:
    """Fast ``covers`` queries over a set of extents."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, extents: Sequence[Extent] = ()) -> None:
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for e in merge_extents(extents):
            self._starts.setdefault(e.part, []).append(e.offset)
            self._ends.setdefault(e.part, []).append(e.end)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def covers(self, part: int, offset: int, length: int) -> bool:
        starts = self._starts.get(part)
        if not starts or length <= 0:
            return False
        i = bisect.bisect_right(starts, offset) - 1
        return i >= 0 and offset + length <= self._ends[part][i]

    def total(self) -> int:
        return sum(
            e - s for p, ss in self._starts.items() for s, e in zip(ss, self._ends[p], strict=True)
        )
