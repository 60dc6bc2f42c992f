"""The two byte transforms of an RPC tunnel, sans-IO: weight uploads out, weight uploads back in.

Host end (:class:`HostSplicer`), on the llama-server -> worker bytes: every frame passes through
unchanged except a ``SET_TENSOR`` whose tensor name is a tensor of the host's GGUF and whose data
equals the host's own file bytes at that tensor's data offset + the ``SET_TENSOR`` offset. Such an
upload becomes a TENSOR_REF (334 bytes) when the worker said it can read that range locally, or a
TENSOR_STORE (the same bytes, tagged) when the worker keeps what it is sent. The data is compared
chunk by chunk as it arrives and nothing of it is kept: when it matches, what is sent is re-read
from the host's file; on the first mismatching byte the original frame is sent, its matched prefix
re-read from the file. So the host buffers no frame, whatever the tensor size.

Worker end (:class:`WorkerSplicer`), on the tunnel -> rpc-server bytes: private frames become an
ordinary ``SET_TENSOR`` again (the data read from the worker's own file or store by the adapter);
everything else passes through, except that HELLO's transport capabilities are zeroed so the
rpc-server never negotiates RDMA around the tunnel.

Outputs are lists of ``bytes`` (send as is) and small action records the asyncio adapter carries
out. :class:`RpcTunnelStats` counts what crossed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mesh_llm.protocol.rpc import (
    COMMANDS_WITH_REPLY,
    HELLO_REQUEST_SIZE,
    SET_TENSOR_HEAD_SIZE,
    FrameBody,
    FrameEnd,
    FrameStart,
    MeshCommand,
    RpcCodecError,
    RpcCommand,
    RpcFrameParser,
    command_name,
    encode_set_tensor_header,
    request_prefix_len,
    set_tensor_name,
    set_tensor_offset,
    tunnel_prefix_len,
)
from mesh_llm.protocol.rpc_mesh import (
    Holdings,
    TensorRef,
    decode_tensor_ref,
    encode_store_header,
    encode_tensor_ref,
)

__all__ = [
    "FileSlice",
    "HostSplicer",
    "HostWeights",
    "ReadRef",
    "RpcTunnelStats",
    "StoreBegin",
    "StoreChunk",
    "StoreDone",
    "TensorLocation",
    "WorkerSplicer",
]

_PRIVATE_FIRST = min(MeshCommand)


@dataclass(frozen=True, slots=True)
class TensorLocation:
    """Where a tensor's data lies in the model files: part index, absolute offset, bytes."""

    part: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True, eq=False)
class HostWeights:
    """The host's model as the tunnel needs it (built by ``inference.host_weights``)."""

    identity: bytes  # 32-byte identity hash (models.identity_hash)
    parts: tuple[Path, ...]
    part_sizes: tuple[int, ...]
    tensors: Mapping[bytes, TensorLocation]  # tensor name (UTF-8) -> location


@dataclass(slots=True)
class RpcTunnelStats:
    """Counters of the RPC tunnels to or from one peer (both ends keep one per peer)."""

    connections: int = 0
    active: int = 0
    bytes_sent: int = 0  # over the tunnel, to the peer
    bytes_received: int = 0  # over the tunnel, from the peer
    round_trips: int = 0  # commands that expect a reply
    bytes_saved: int = 0  # weight bytes replaced by references (read from the worker's disk)
    bytes_stored: int = 0  # weight bytes sent (host) / kept (worker) in TENSOR_STORE frames
    refs: int = 0
    stores: int = 0
    frames: dict[str, int] = field(default_factory=dict)
    holding: str = ""  # what the worker said it holds, at the last preamble
    last_error: str = ""

    def frame(self, cmd: int) -> None:
        name = command_name(cmd)
        self.frames[name] = self.frames.get(name, 0) + 1
        if cmd in COMMANDS_WITH_REPLY:
            self.round_trips += 1

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy for ``/api/status``."""
        return {
            "connections": self.connections,
            "active": self.active,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "round_trips": self.round_trips,
            "bytes_saved": self.bytes_saved,
            "bytes_stored": self.bytes_stored,
            "refs": self.refs,
            "stores": self.stores,
            "frames": dict(self.frames),
            "holding": self.holding,
            "last_error": self.last_error,
        }


class ByteSource(Protocol):
    """Random access to one model file part (an ``mmap``, or ``bytes`` in tests)."""

    def __getitem__(self, key: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Host output: send ``length`` bytes of the host's own file part ``part`` at ``offset``."""

    part: int
    offset: int
    length: int


HostOutput = bytes | FileSlice


class _Mode(enum.Enum):
    PASS = 0
    REF = 1
    STORE = 2


class HostSplicer:
    """Rewrites llama-server's request stream for one tunnel (see module doc)."""

    __slots__ = (
        "_accepts_store",
        "_files",
        "_frame_head",
        "_holdings",
        "_length",
        "_matched",
        "_mode",
        "_out",
        "_parser",
        "_part",
        "_pos",
        "_set_head",
        "_stats",
        "_tensors",
    )

    def __init__(
        self,
        weights: HostWeights | None,
        files: Sequence[ByteSource],
        holdings: Holdings,
        accepts_store: bool,
        stats: RpcTunnelStats,
    ) -> None:
        self._tensors: Mapping[bytes, TensorLocation] = weights.tensors if weights else {}
        self._files = files
        self._holdings = holdings
        self._accepts_store = accepts_store and weights is not None
        self._stats = stats
        self._parser = RpcFrameParser(request_prefix_len)
        self._mode = _Mode.PASS
        self._out: list[HostOutput] = []
        self._frame_head = b""
        self._set_head = b""
        self._part = self._pos = self._length = self._matched = 0

    @property
    def active(self) -> bool:
        """False when nothing can be rewritten (no weights, or the worker holds and keeps none)."""
        return bool(self._tensors) and (bool(self._holdings) or self._accepts_store)

    def feed(self, data: bytes) -> list[HostOutput]:
        """What to send for ``data``; ``[data]`` itself when nothing in it was rewritten.

        Raises :class:`RpcCodecError` when llama-server sends a command byte mesh-llm reserves.
        """
        out: list[HostOutput] = []
        self._out = out
        # ``[data]`` as is only when the events cover exactly ``data`` and nothing was held back.
        diverted = self._mode is not _Mode.PASS or self._parser.pending > 0
        for event in self._parser.feed(data):
            match event:
                case FrameBody(chunk):
                    if self._mode is _Mode.PASS:
                        out.append(chunk)
                    else:
                        self._compare(chunk)
                case FrameStart():
                    diverted = self._start(event) or diverted
                case FrameEnd():
                    if self._mode is not _Mode.PASS:
                        self._finish()
        return out if diverted or self._parser.pending else [data]

    def _start(self, event: FrameStart) -> bool:
        """Handle a frame head; True when this frame is (for now) held back from the output."""
        cmd = event.cmd
        self._stats.frame(cmd)
        if cmd >= _PRIVATE_FIRST:
            raise RpcCodecError(f"llama-server sent command {command_name(cmd)}, reserved")
        if cmd == RpcCommand.SET_TENSOR and len(event.prefix) == SET_TENSOR_HEAD_SIZE:
            mode = self._choose(event)
            if mode is not _Mode.PASS:
                self._mode = mode
                return True
        self._out.append(event.header + event.prefix)
        return False

    def _choose(self, event: FrameStart) -> _Mode:
        if not self.active:
            return _Mode.PASS
        loc = self._tensors.get(set_tensor_name(event.prefix))
        if loc is None:  # graph inputs, KV cache, anything not from the file: no decoding
            return _Mode.PASS
        offset = set_tensor_offset(event.prefix)
        length = event.size - SET_TENSOR_HEAD_SIZE
        if length <= 0 or offset + length > loc.size:
            return _Mode.PASS
        if loc.part >= len(self._files) or loc.offset + loc.size > len(self._files[loc.part]):
            return _Mode.PASS
        pos = loc.offset + offset
        if self._holdings.covers(loc.part, pos, length):
            mode = _Mode.REF
        elif self._accepts_store:
            mode = _Mode.STORE
        else:
            return _Mode.PASS
        self._frame_head, self._set_head = event.header, event.prefix
        self._part, self._pos, self._length, self._matched = loc.part, pos, length, 0
        return mode

    def _compare(self, chunk: bytes) -> None:
        start = self._pos + self._matched
        if self._files[self._part][start : start + len(chunk)] == chunk:
            self._matched += len(chunk)
            return
        # Not the file's bytes: send the original frame (matched prefix re-read from the file).
        self._out.append(self._frame_head + self._set_head)
        if self._matched:
            self._out.append(FileSlice(self._part, self._pos, self._matched))
        self._out.append(chunk)
        self._mode = _Mode.PASS

    def _finish(self) -> None:
        ref = TensorRef(self._part, self._pos, self._length, self._set_head)
        if self._mode is _Mode.REF:
            self._out.append(encode_tensor_ref(ref))
            self._stats.refs += 1
            self._stats.bytes_saved += self._length
        else:
            self._out.append(encode_store_header(ref))
            self._out.append(FileSlice(self._part, self._pos, self._length))
            self._stats.stores += 1
            self._stats.bytes_stored += self._length
        self._mode = _Mode.PASS


# ----------------------------------------------------------------------------- worker end


@dataclass(frozen=True, slots=True)
class ReadRef:
    """Worker output: send ``length`` bytes at ``offset`` of local part ``part`` (file or store)."""

    part: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StoreBegin:
    """Worker output: a TENSOR_STORE frame of ``length`` bytes for part ``part`` at ``offset``
    begins (its ``SET_TENSOR`` header was the previous output)."""

    part: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StoreChunk:
    """Worker output: forward ``data`` and keep it at ``offset`` of part ``part``."""

    part: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StoreDone:
    """Worker output: a TENSOR_STORE frame is complete; record its extent."""

    part: int
    offset: int
    length: int


WorkerOutput = bytes | ReadRef | StoreBegin | StoreChunk | StoreDone


class WorkerSplicer:
    """Expands the host's private frames back into ``SET_TENSOR`` for the local rpc-server.

    ``holdings`` is what this worker told the host it can read (file or store); a TENSOR_REF
    outside it is a protocol error (:class:`RpcCodecError`), as is any malformed private frame.
    """

    __slots__ = ("_first", "_holdings", "_parser", "_stats", "_store_pos", "_store_ref")

    def __init__(self, holdings: Holdings, stats: RpcTunnelStats) -> None:
        self._holdings = holdings
        self._stats = stats
        self._parser = RpcFrameParser(tunnel_prefix_len)
        self._first = True
        self._store_ref: TensorRef | None = None
        self._store_pos = 0

    def feed(self, data: bytes) -> list[WorkerOutput]:
        out: list[WorkerOutput] = []
        # ``[data]`` as is only when the events cover exactly ``data`` and nothing was changed.
        diverted = self._store_ref is not None or self._parser.pending > 0
        for event in self._parser.feed(data):
            match event:
                case FrameBody(chunk):
                    ref = self._store_ref
                    if ref is None:
                        out.append(chunk)
                    else:
                        out.append(StoreChunk(ref.part, ref.file_offset + self._store_pos, chunk))
                        self._store_pos += len(chunk)
                case FrameStart():
                    diverted = self._start(event, out) or diverted
                case FrameEnd():
                    ref = self._store_ref
                    if ref is not None:
                        out.append(StoreDone(ref.part, ref.file_offset, ref.length))
                        self._store_ref = None
        return out if diverted or self._parser.pending else [data]

    def _start(self, event: FrameStart, out: list[WorkerOutput]) -> bool:
        first, self._first = self._first, False
        cmd = event.cmd
        self._stats.frame(cmd)
        if cmd in (MeshCommand.TENSOR_REF, MeshCommand.TENSOR_STORE):
            ref = decode_tensor_ref(cmd, event.size, event.prefix)
            out.append(encode_set_tensor_header(ref.set_head, ref.length))
            if cmd == MeshCommand.TENSOR_REF:
                if not self._holdings.covers(ref.part, ref.file_offset, ref.length):
                    raise RpcCodecError(
                        f"TENSOR_REF for {ref.part}:{ref.file_offset}+{ref.length}, "
                        "which this worker does not hold"
                    )
                out.append(ReadRef(ref.part, ref.file_offset, ref.length))
                self._stats.refs += 1
                self._stats.bytes_saved += ref.length
            else:
                self._store_ref, self._store_pos = ref, 0
                out.append(StoreBegin(ref.part, ref.file_offset, ref.length))
                self._stats.stores += 1
                self._stats.bytes_stored += ref.length
            return True
        if first and cmd == RpcCommand.HELLO and len(event.prefix) == HELLO_REQUEST_SIZE:
            # conn_caps zeroed: no RDMA upgrade that would bypass the tunnel.
            out.append(event.header + bytes(HELLO_REQUEST_SIZE))
            return event.prefix != bytes(HELLO_REQUEST_SIZE)
        out.append(event.header + event.prefix)
        return False
