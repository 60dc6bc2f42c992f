"""Control-frame codec: framing, protobuf bodies, validation. Sans-IO.

The rules: docs/DESIGN.md, "Streams and control frames".

Wire shape of a control stream::

    opener:  [type u8][len u32 LE][body]      (encode_frame)
    reply:             [len u32 LE][body]      (encode_reply)

The receiving side reads the type byte itself (:func:`parse_stream_type`), then feeds the rest to a
:class:`FrameDecoder`, which rejects a declared length above the cap before buffering any body.

Bodies decode into the frozen dataclasses below; generated protobuf classes never leave this
package. Every failure, whether malformed protobuf, a wrong ``gen``, a bad id or a spoofed sender,
raises :class:`FrameError`. Decoders that check an id against the connection take ``remote_id``,
the 32-byte key from the TLS handshake.

Validation beyond the Rust nodes': a gossip entry whose
``serialized_addr`` names a different id than its ``endpoint_id`` is dropped, as is one whose
``endpoint_id`` is not a valid Ed25519 point (which Rust also drops).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError, EncodeError

from mesh_llm.errors import ProtocolError
from mesh_llm.protocol.generated import node_pb2 as pb
from mesh_llm.protocol.streams import MAX_CONTROL_FRAME_BYTES, NODE_PROTOCOL_GENERATION, StreamType
from mesh_llm.protocol.token import (
    EndpointAddrInfo,
    InvalidTokenError,
    PeerId,
    decode_addr_json,
    encode_addr_json,
)

__all__ = [
    "FRAME_HEADER_BYTES",
    "DemandEntry",
    "FrameDecoder",
    "FrameError",
    "GossipFrame",
    "NodeRole",
    "PeerAnnouncement",
    "PeerDown",
    "PeerLeaving",
    "RouteEntry",
    "RouteTable",
    "RouteTableRequest",
    "ServedModel",
    "TunnelEntry",
    "TunnelMap",
    "decode_gossip_frame",
    "decode_peer_down",
    "decode_peer_leaving",
    "decode_route_table",
    "decode_route_table_request",
    "decode_tunnel_map",
    "encode_frame",
    "encode_gossip_frame",
    "encode_peer_down",
    "encode_peer_leaving",
    "encode_reply",
    "encode_route_table",
    "encode_route_table_request",
    "encode_tunnel_map",
    "is_valid_endpoint_id",
    "parse_frame_length",
    "parse_stream_type",
]

FRAME_HEADER_BYTES: Final = 4
"""Size of the little-endian u32 length prefix."""

_ID_BYTES: Final = 32
_MAX_PORT: Final = 0xFFFF
_LEN: Final = struct.Struct("<I")


class FrameError(ProtocolError):
    """A control frame could not be decoded or failed validation."""


# --------------------------------------------------------------------------------------------
# Framing


def parse_stream_type(byte: int) -> StreamType:
    """Map the first byte of a stream to its type; unknown bytes raise :class:`FrameError`."""
    try:
        return StreamType(byte)
    except ValueError:
        raise FrameError(f"unknown stream type 0x{byte:02x}") from None


def encode_frame(stream_type: StreamType, body: bytes) -> bytes:
    """What the opener of a control stream writes: type byte, length, body."""
    return bytes((stream_type,)) + encode_reply(body)


def encode_reply(body: bytes) -> bytes:
    """A length-prefixed body without a type byte (replies, and the part after the type byte)."""
    if len(body) > 0xFFFFFFFF:
        raise FrameError("frame body does not fit a u32 length")
    return _LEN.pack(len(body)) + body


def parse_frame_length(header: bytes, max_bytes: int = MAX_CONTROL_FRAME_BYTES) -> int:
    """Decode the 4-byte length prefix and enforce the cap (for callers using exact reads)."""
    if len(header) != FRAME_HEADER_BYTES:
        raise FrameError(f"frame header must be {FRAME_HEADER_BYTES} bytes, got {len(header)}")
    (length,) = _LEN.unpack(header)
    if length > max_bytes:
        raise FrameError(f"declared frame length {length} exceeds the cap of {max_bytes}")
    return int(length)


class FrameDecoder:
    """Incremental decoder of ``[len u32 LE][body]`` frames.

    ``feed`` bytes as they arrive and collect the complete bodies it returns. A declared length
    above ``max_bytes`` raises :class:`FrameError` as soon as the four length bytes are known,
    before any of the body is buffered. After an error the decoder stays failed.
    """

    __slots__ = ("_buffer", "_expected", "_failed", "_max_bytes")

    def __init__(self, max_bytes: int = MAX_CONTROL_FRAME_BYTES) -> None:
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._expected: int | None = None
        self._failed = False

    @property
    def bytes_needed(self) -> int:
        """How many more bytes complete the current header or body (never 0)."""
        if self._expected is None:
            return FRAME_HEADER_BYTES - len(self._buffer)
        return self._expected - len(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes held that belong to an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return every body it completed, in order."""
        if self._failed:
            raise FrameError("decoder already failed")
        frames: list[bytes] = []
        view = memoryview(data)
        while view:
            take = min(self.bytes_needed, len(view))
            self._buffer += view[:take]
            view = view[take:]
            if self.bytes_needed:
                continue
            if self._expected is None:
                try:
                    self._expected = parse_frame_length(bytes(self._buffer), self._max_bytes)
                except FrameError:
                    self._failed = True
                    raise
                self._buffer.clear()
                if self._expected:
                    continue
            frames.append(bytes(self._buffer))
            self._buffer.clear()
            self._expected = None
        return frames

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for the stream to end)."""
        return self._expected is None and not self._buffer


# --------------------------------------------------------------------------------------------
# Data model


class NodeRole(enum.Enum):
    """A peer's role. Unknown or unspecified roles on the wire decode as WORKER."""

    WORKER = 1
    HOST = 2
    CLIENT = 3


@dataclass(frozen=True, slots=True)
class DemandEntry:
    """How recently and how often a model was requested (unix seconds, count)."""

    model_name: str
    last_active: int
    request_count: int


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a peer serves, from ``served_model_runtime``."""

    name: str
    identity_hash: str | None = None
    context_length: int | None = None
    ready: bool = False


@dataclass(frozen=True, slots=True)
class PeerAnnouncement:
    """One gossip entry: what a node says about itself or about a peer it knows.

    ``addr`` is the parsed ``serialized_addr`` (None when absent or unparsable); its id always
    equals ``endpoint_id``. ``hosted_models_known`` is resolved on receipt: absent on the wire
    means "``hosted_models`` is non-empty". ``mesh_id`` and ``demand`` are only meaningful in
    the sender's self entry.
    """

    endpoint_id: PeerId
    role: NodeRole = NodeRole.WORKER
    http_port: int | None = None
    version: str | None = None
    addr: EndpointAddrInfo | None = None
    serving_models: tuple[str, ...] = ()
    hosted_models: tuple[str, ...] = ()
    hosted_models_known: bool = False
    requested_models: tuple[str, ...] = ()
    catalog_models: tuple[str, ...] = ()
    primary_serving: str | None = None
    served_models: tuple[ServedModel, ...] = ()
    vram_bytes: int = 0
    mesh_id: str | None = None
    demand: tuple[DemandEntry, ...] = ()
    model_source: str | None = None
    llama_build: str | None = None
    rpc_ready: bool = False
    gpu_name: str | None = None
    gpu_vram: str | None = None
    hostname: str | None = None
    is_soc: bool | None = None
    available_models: tuple[tuple[str, int], ...] = ()
    """Models on the node's disk that it could load, with their sizes in bytes (name order):
    fields 9 and 21, which the reference empties before sending and ignores on receipt; mesh-llm
    uses them to pick a node for a cold start (docs/DESIGN.md, "Many models")."""


@dataclass(frozen=True, slots=True)
class GossipFrame:
    """Stream 0x01 in both directions: the sender's view of the mesh, self entry last."""

    sender_id: PeerId
    peers: tuple[PeerAnnouncement, ...]


@dataclass(frozen=True, slots=True)
class RouteTableRequest:
    """Stream 0x05 request; ``requester_id`` is None when the requester sends no id."""

    requester_id: PeerId | None = None


@dataclass(frozen=True, slots=True)
class RouteEntry:
    endpoint_id: PeerId
    model: str


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Stream 0x05 reply: one entry per (host, model)."""

    entries: tuple[RouteEntry, ...] = ()
    mesh_id: str | None = None


@dataclass(frozen=True, slots=True)
class PeerDown:
    """Stream 0x06: the sender believes ``peer_id`` is dead."""

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class PeerLeaving:
    """Stream 0x07: the sender (``peer_id``) is shutting down."""

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class TunnelEntry:
    target_peer_id: PeerId
    tunnel_port: int
    relay_peer_id: PeerId | None = None


@dataclass(frozen=True, slots=True)
class TunnelMap:
    """Stream 0x03: the owner's local tunnel port for each target peer."""

    owner_peer_id: PeerId
    entries: tuple[TunnelEntry, ...] = ()


# --------------------------------------------------------------------------------------------
# Ed25519 point check: iroh drops keys that do not decompress to a curve point.

_P: Final = 2**255 - 19
_D: Final = -121665 * pow(121666, -1, _P) % _P


def is_valid_endpoint_id(key: bytes) -> bool:
    """True if ``key`` is 32 bytes that decompress to an Ed25519 curve point.

    Mirrors the check iroh (curve25519-dalek) applies when parsing a public key: with
    ``y`` the low 255 bits, ``x^2 = (y^2 - 1) / (d y^2 + 1)`` must have a square root.
    """
    if len(key) != _ID_BYTES:
        return False
    y = (int.from_bytes(key, "little") & ((1 << 255) - 1)) % _P
    y2 = y * y % _P
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P  # d*y^2+1 is never 0: -1/d is a non-square
    return x2 == 0 or pow(x2, (_P - 1) // 2, _P) == 1


# --------------------------------------------------------------------------------------------
# Decoding


def _parse(message: Any, body: bytes) -> None:
    try:
        message.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FrameError(f"malformed {type(message).__name__}: {exc}") from exc


def _check_gen(gen: int, what: str) -> None:
    if gen != NODE_PROTOCOL_GENERATION:
        raise FrameError(f"{what}: unsupported protocol generation {gen}")


def _check_id(value: bytes, what: str) -> PeerId:
    if len(value) != _ID_BYTES:
        raise FrameError(f"{what} must be {_ID_BYTES} bytes, got {len(value)}")
    return PeerId(bytes(value))


def _check_remote(remote_id: bytes) -> None:
    if len(remote_id) != _ID_BYTES:
        raise ValueError("remote_id must be the 32-byte key of the connection's peer")


def _opt(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def _role(value: int) -> NodeRole:
    try:
        return NodeRole(value)
    except ValueError:
        return NodeRole.WORKER


def _announcement(msg: Any) -> PeerAnnouncement | None:
    """Decode one entry; None means drop it silently, FrameError rejects the whole frame."""
    endpoint_id = _check_id(msg.endpoint_id, "peer endpoint_id")
    role = _role(msg.role)
    http_port: int | None = _opt(msg, "http_port")
    if role is NodeRole.HOST and http_port is None:
        raise FrameError("HOST announcement without http_port")
    if http_port is not None and http_port > _MAX_PORT:
        raise FrameError(f"http_port {http_port} out of range")
    if not is_valid_endpoint_id(endpoint_id):
        return None
    addr: EndpointAddrInfo | None = None
    if msg.serialized_addr:
        try:
            addr = decode_addr_json(msg.serialized_addr)
        except InvalidTokenError:
            addr = None  # Rust keeps such an entry, keyed by endpoint_id, with no addresses.
        if addr is not None and addr.id_bytes != endpoint_id:
            return None  # an address naming another node: never trusted
    hosted = tuple(msg.hosted_models)
    known = msg.hosted_models_known if msg.HasField("hosted_models_known") else bool(hosted)
    return PeerAnnouncement(
        endpoint_id=endpoint_id,
        role=role,
        http_port=http_port,
        version=_opt(msg, "version"),
        addr=addr,
        serving_models=tuple(msg.serving_models),
        hosted_models=hosted,
        hosted_models_known=known,
        requested_models=tuple(msg.requested_models),
        catalog_models=tuple(msg.catalog_models),
        primary_serving=_opt(msg, "primary_serving"),
        served_models=tuple(
            ServedModel(
                name=rt.model_name,
                identity_hash=_opt(rt, "identity_hash"),
                context_length=_opt(rt, "context_length"),
                ready=rt.ready,
            )
            for rt in msg.served_model_runtime
        ),
        vram_bytes=msg.vram_bytes,
        mesh_id=_opt(msg, "mesh_id"),
        demand=tuple(DemandEntry(d.model_name, d.last_active, d.request_count) for d in msg.demand),
        model_source=_opt(msg, "model_source"),
        llama_build=_opt(msg, "llama_build"),
        rpc_ready=bool(_opt(msg, "rpc_ready")),
        gpu_name=_opt(msg, "gpu_name"),
        gpu_vram=_opt(msg, "gpu_vram"),
        hostname=_opt(msg, "hostname"),
        is_soc=_opt(msg, "is_soc"),
        available_models=_available_models(msg),
    )


MAX_AVAILABLE_MODELS = 256
"""On-disk models kept per announcement (a peer cannot grow our tables without bound)."""


def _available_models(msg: Any) -> tuple[tuple[str, int], ...]:
    sizes = dict(msg.available_model_sizes)
    names = list(dict.fromkeys([*msg.available_models, *sizes]))[:MAX_AVAILABLE_MODELS]
    return tuple(sorted((name, int(sizes.get(name, 0))) for name in names if name))


def decode_gossip_frame(body: bytes, *, remote_id: bytes) -> GossipFrame:
    """Decode and validate a ``GossipFrame`` received from the peer whose key is ``remote_id``.

    Rejects the whole frame on a bad ``gen``, a ``sender_id`` other than ``remote_id``, any
    entry whose ``endpoint_id`` is not 32 bytes, or a HOST entry without ``http_port``.
    Entries with an invalid key or a mismatching ``serialized_addr`` are dropped.
    """
    _check_remote(remote_id)
    msg = pb.GossipFrame()
    _parse(msg, body)
    _check_gen(msg.gen, "GossipFrame")
    sender = _check_id(msg.sender_id, "GossipFrame.sender_id")
    if sender != remote_id:
        raise FrameError("GossipFrame.sender_id does not match the connection's peer")
    peers = tuple(p for p in (_announcement(m) for m in msg.peers) if p is not None)
    return GossipFrame(sender_id=sender, peers=peers)


def decode_route_table_request(body: bytes) -> RouteTableRequest:
    msg = pb.RouteTableRequest()
    _parse(msg, body)
    _check_gen(msg.gen, "RouteTableRequest")
    if not msg.requester_id:
        return RouteTableRequest(None)
    return RouteTableRequest(_check_id(msg.requester_id, "RouteTableRequest.requester_id"))


def decode_route_table(body: bytes) -> RouteTable:
    msg = pb.RouteTable()
    _parse(msg, body)
    _check_gen(msg.gen, "RouteTable")
    entries = tuple(
        RouteEntry(_check_id(e.endpoint_id, "RouteEntry.endpoint_id"), e.model) for e in msg.entries
    )
    return RouteTable(entries=entries, mesh_id=_opt(msg, "mesh_id"))


def decode_peer_down(body: bytes) -> PeerDown:
    msg = pb.PeerDown()
    _parse(msg, body)
    _check_gen(msg.gen, "PeerDown")
    return PeerDown(_check_id(msg.peer_id, "PeerDown.peer_id"))


def decode_peer_leaving(body: bytes, *, remote_id: bytes) -> PeerLeaving:
    """Decode a ``PeerLeaving``; only the leaving node itself may send it."""
    _check_remote(remote_id)
    msg = pb.PeerLeaving()
    _parse(msg, body)
    _check_gen(msg.gen, "PeerLeaving")
    peer = _check_id(msg.peer_id, "PeerLeaving.peer_id")
    if peer != remote_id:
        raise FrameError("PeerLeaving.peer_id does not match the connection's peer")
    return PeerLeaving(peer)


def decode_tunnel_map(body: bytes, *, remote_id: bytes) -> TunnelMap:
    """Decode a ``TunnelMap``; the owner must be the sender, targets valid keys, ports u16."""
    _check_remote(remote_id)
    msg = pb.TunnelMap()
    _parse(msg, body)
    owner = _check_id(msg.owner_peer_id, "TunnelMap.owner_peer_id")
    if owner != remote_id:
        raise FrameError("TunnelMap.owner_peer_id does not match the connection's peer")
    entries: list[TunnelEntry] = []
    for e in msg.entries:
        target = _check_id(e.target_peer_id, "TunnelEntry.target_peer_id")
        if not is_valid_endpoint_id(target):
            raise FrameError("TunnelEntry.target_peer_id is not a valid key")
        if e.tunnel_port > _MAX_PORT:
            raise FrameError(f"TunnelEntry.tunnel_port {e.tunnel_port} out of range")
        relay = _opt(e, "relay_peer_id")
        if relay is not None:
            relay = _check_id(relay, "TunnelEntry.relay_peer_id")
        entries.append(TunnelEntry(target, e.tunnel_port, relay))
    return TunnelMap(owner, tuple(entries))


# --------------------------------------------------------------------------------------------
# Encoding


def _serialize(msg: Any) -> bytes:
    try:
        data: bytes = msg.SerializeToString()
    except (EncodeError, ValueError, TypeError) as exc:  # pragma: no cover - our own data
        raise FrameError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    return data


def _set_optional(msg: Any, field: str, value: object) -> None:
    if value is not None:
        setattr(msg, field, value)


def _announcement_pb(peer: PeerAnnouncement, out: Any) -> None:
    out.endpoint_id = peer.endpoint_id
    out.role = peer.role.value
    _set_optional(out, "http_port", peer.http_port)
    _set_optional(out, "version", peer.version)
    _set_optional(out, "gpu_name", peer.gpu_name)
    _set_optional(out, "hostname", peer.hostname)
    _set_optional(out, "is_soc", peer.is_soc)
    _set_optional(out, "gpu_vram", peer.gpu_vram)
    out.serving_models.extend(peer.serving_models)
    out.requested_models.extend(peer.requested_models)
    out.catalog_models.extend(peer.catalog_models)
    out.vram_bytes = peer.vram_bytes
    _set_optional(out, "model_source", peer.model_source)
    _set_optional(out, "llama_build", peer.llama_build)
    _set_optional(out, "rpc_ready", peer.rpc_ready or None)
    _set_optional(out, "primary_serving", peer.primary_serving)
    _set_optional(out, "mesh_id", peer.mesh_id)
    for d in peer.demand:
        out.demand.add(
            model_name=d.model_name, last_active=d.last_active, request_count=d.request_count
        )
    if peer.addr is not None:
        out.serialized_addr = encode_addr_json(peer.addr)
    out.hosted_models.extend(peer.hosted_models)
    out.hosted_models_known = peer.hosted_models_known
    for name, size in peer.available_models:
        out.available_models.append(name)
        out.available_model_sizes[name] = size
    for m in peer.served_models:
        rt = out.served_model_runtime.add(model_name=m.name, ready=m.ready)
        _set_optional(rt, "identity_hash", m.identity_hash)
        _set_optional(rt, "context_length", m.context_length)


def encode_gossip_frame(frame: GossipFrame) -> bytes:
    """Protobuf body of a ``GossipFrame``; wrap it with ``encode_frame`` or ``encode_reply``."""
    msg = pb.GossipFrame(gen=NODE_PROTOCOL_GENERATION, sender_id=frame.sender_id)
    for peer in frame.peers:
        _announcement_pb(peer, msg.peers.add())
    return _serialize(msg)


def encode_route_table_request(request: RouteTableRequest) -> bytes:
    msg = pb.RouteTableRequest(
        requester_id=request.requester_id or b"", gen=NODE_PROTOCOL_GENERATION
    )
    return _serialize(msg)


def encode_route_table(table: RouteTable) -> bytes:
    msg = pb.RouteTable(gen=NODE_PROTOCOL_GENERATION)
    for e in table.entries:
        msg.entries.add(endpoint_id=e.endpoint_id, model=e.model)
    _set_optional(msg, "mesh_id", table.mesh_id)
    return _serialize(msg)


def encode_peer_down(message: PeerDown) -> bytes:
    return _serialize(pb.PeerDown(peer_id=message.peer_id, gen=NODE_PROTOCOL_GENERATION))


def encode_peer_leaving(message: PeerLeaving) -> bytes:
    return _serialize(pb.PeerLeaving(peer_id=message.peer_id, gen=NODE_PROTOCOL_GENERATION))


def encode_tunnel_map(tunnel_map: TunnelMap) -> bytes:
    msg = pb.TunnelMap(owner_peer_id=tunnel_map.owner_peer_id)
    for e in tunnel_map.entries:
        entry = msg.entries.add(target_peer_id=e.target_peer_id, tunnel_port=e.tunnel_port)
        _set_optional(entry, "relay_peer_id", e.relay_peer_id)
    return _serialize(msg)
