"""Stream types, ALPN and size caps of the mesh wire protocol (docs/DESIGN.md, "Streams and
control frames").

Every mesh stream is a QUIC bidirectional stream whose opener writes one type byte first.
Control streams then carry ``[u32 LE length][protobuf body]`` (see :mod:`.frames`); the
tunnel types (0x02, 0x04) carry raw bytes after the type byte.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "ALPN",
    "ALPN_LEGACY",
    "MAX_CONTROL_FRAME_BYTES",
    "MAX_PLUGIN_BULK_FRAME_BYTES",
    "MAX_PLUGIN_CHANNEL_FRAME_BYTES",
    "NODE_PROTOCOL_GENERATION",
    "PRE_ADMISSION_STREAM_TYPES",
    "StreamType",
    "max_frame_bytes",
]

ALPN: Final = b"mesh-llm/1"
"""The ALPN we advertise and offer: protobuf framing, generation 1."""

ALPN_LEGACY: Final = b"mesh-llm/0"
"""Legacy JSON ALPN of older Rust nodes; recognised, never offered."""

NODE_PROTOCOL_GENERATION: Final = 1
"""Value every ``gen`` field must carry; any other value, including 0/absent, is rejected."""

MAX_CONTROL_FRAME_BYTES: Final = 8 * 1024 * 1024
"""Largest accepted control-frame body; a larger declared length is rejected unread."""

MAX_PLUGIN_CHANNEL_FRAME_BYTES: Final = 10_000_000
MAX_PLUGIN_BULK_FRAME_BYTES: Final = 64_000_000


class StreamType(IntEnum):
    """The first byte the opener writes on every bidirectional stream."""

    GOSSIP = 0x01
    TUNNEL_RPC = 0x02
    TUNNEL_MAP = 0x03
    TUNNEL_HTTP = 0x04
    ROUTE_REQUEST = 0x05
    PEER_DOWN = 0x06
    PEER_LEAVING = 0x07
    BLACKBOARD = 0x08
    PLUGIN_CHANNEL = 0x09
    PLUGIN_BULK_TRANSFER = 0x0A
    ADMIT = 0x0B
    """Private meshes only: the mesh-secret proof, the first stream of a connection
    (:mod:`.admission`)."""


PRE_ADMISSION_STREAM_TYPES: Final = frozenset({StreamType.GOSSIP, StreamType.ROUTE_REQUEST})
"""Types served to a connection whose remote is not yet an admitted peer."""


def max_frame_bytes(stream_type: StreamType) -> int:
    """The body-size cap for a framed stream type."""
    if stream_type is StreamType.PLUGIN_CHANNEL:
        return MAX_PLUGIN_CHANNEL_FRAME_BYTES
    if stream_type is StreamType.PLUGIN_BULK_TRANSFER:
        return MAX_PLUGIN_BULK_FRAME_BYTES
    return MAX_CONTROL_FRAME_BYTES
