"""Mesh ids (docs/DESIGN.md, "The mesh").

A mesh started without a name gets 32 random lowercase hex chars. A named mesh gets an id derived
from its name (and, when the mesh is published on Nostr, the publisher's public key), so every
node started with the same name computes the same id.

The derivation reproduces what the Rust nodes compute, so a Python node and a Rust node started
with the same ``--mesh-name`` agree: SipHash-1-3 with keys (0, 0) (Rust's ``DefaultHasher``) over
``b"mesh-llm:" 0xFF name 0xFF`` followed by ``pubkey_hex 0xFF`` when publishing (the 0xFF after
each string is how Rust's ``Hash for str`` terminates it), printed as 16 lowercase hex chars.
Test vectors (what the Rust nodes compute): ("poker-night", none) -> ``a1bcbf45bc983045``;
("poker-night", "abcdef") -> ``91708720bae4e358``.
"""

from __future__ import annotations

import secrets
from typing import Final

__all__ = ["named_mesh_id", "random_mesh_id", "siphash13"]

_MASK: Final = (1 << 64) - 1
_STR_TERMINATOR: Final = b"\xff"


def named_mesh_id(name: str, publisher_pubkey_hex: str | None = None) -> str:
    """The 16-hex-char id of the mesh called ``name`` (optionally scoped to a Nostr publisher)."""
    data = b"mesh-llm:" + _STR_TERMINATOR + name.encode() + _STR_TERMINATOR
    if publisher_pubkey_hex is not None:
        data += publisher_pubkey_hex.encode() + _STR_TERMINATOR
    return f"{siphash13(data):016x}"


def random_mesh_id() -> str:
    """A fresh id for an unnamed mesh: 32 random lowercase hex chars."""
    return secrets.token_hex(16)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 (one compression round, three finalisation rounds) of ``data``, as a u64."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    length = len(data)
    tail_start = length - length % 8
    for offset in range(0, tail_start, 8):
        m = int.from_bytes(data[offset : offset + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((length & 0xFF) << 56) | int.from_bytes(data[tail_start:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3
