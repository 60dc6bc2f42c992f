"""Endpoint addresses and invite tokens (docs/DESIGN.md, "The mesh").

An invite token is ``base64url_nopad(JSON(EndpointAddr))`` where the JSON is iroh's serde form::

    {"id":"<64 lowercase hex>","addrs":[{"Relay":"https://relay.example./"},{"Ip":"1.2.3.4:5"}]}

The same JSON, un-encoded, is ``PeerAnnouncement.serialized_addr``. Writers emit the relay entries
first, then the IP entries in iroh's order (IPv4 before IPv6, then by address and port); readers
accept any order, hex ids in either case and iroh's 52-character base32 ids. Unknown address kinds
are skipped so that a newer iroh's extra variants do not make a whole token unreadable.

A private mesh's token also carries its 32-byte mesh key (docs/DESIGN.md, "Private meshes") as
``"mesh_key":"<64 hex>"`` next to ``id`` and ``addrs``; readers that do not know the field ignore
it, and tokens without it stay valid (:func:`decode_invite` returns ``mesh_key=None``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass
from typing import Final, NewType
from urllib.parse import urlsplit

from mesh_llm.errors import ProtocolError

__all__ = [
    "MAX_TOKEN_CHARS",
    "EndpointAddrInfo",
    "InvalidTokenError",
    "Invite",
    "PeerId",
    "decode_addr_json",
    "decode_invite",
    "decode_token",
    "encode_addr_json",
    "encode_token",
    "parse_endpoint_id",
]

MAX_TOKEN_CHARS: Final = 16 * 1024
"""Longest token (or address JSON) we try to decode; real ones are a few hundred bytes."""

_ID_BYTES: Final = 32
_HEX_CHARS: Final = frozenset("0123456789abcdefABCDEF")


PeerId = NewType("PeerId", bytes)
"""A node's 32-byte endpoint id (its public key). Hex appears only at the edges: JSON, logs,
routing keys, tokens."""


class InvalidTokenError(ProtocolError):
    """An invite token or endpoint-address JSON is malformed."""


@dataclass(frozen=True, slots=True)
class EndpointAddrInfo:
    """Where an endpoint can be reached: its id plus relay URLs and ``ip:port`` socket addresses.

    ``id_hex`` is 64 lowercase hex chars. ``ip_addrs`` hold ``1.2.3.4:5`` / ``[::1]:5`` strings.
    Use :meth:`create` to normalise untrusted or unsorted input.
    """

    id_hex: str
    relay_urls: tuple[str, ...] = ()
    ip_addrs: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        id_hex: str,
        relay_urls: tuple[str, ...] | list[str] = (),
        ip_addrs: tuple[str, ...] | list[str] = (),
    ) -> EndpointAddrInfo:
        """Validate and normalise: lowercase hex id, addresses de-duplicated and ordered."""
        ident = parse_endpoint_id(id_hex).hex()
        relays = tuple(sorted({_check_relay_url(u) for u in relay_urls}))
        ips = tuple(_sort_socket_addrs({_canonical_socket_addr(a) for a in ip_addrs}))
        return cls(ident, relays, ips)

    @property
    def id_bytes(self) -> PeerId:
        """The 32-byte public key."""
        return PeerId(bytes.fromhex(self.id_hex))


def parse_endpoint_id(text: str) -> PeerId:
    """Parse an endpoint id written as 64 hex chars or iroh's 52-char base32 form."""
    if len(text) == 2 * _ID_BYTES:
        if not _HEX_CHARS.issuperset(text):
            raise InvalidTokenError("endpoint id is not valid hex")
        return PeerId(bytes.fromhex(text))
    if len(text) == 52:
        try:
            raw = base64.b32decode(text.upper() + "====")
        except (binascii.Error, ValueError) as exc:
            raise InvalidTokenError("endpoint id is not valid base32") from exc
        if base64.b32encode(raw).decode().rstrip("=").lower() != text.lower():
            raise InvalidTokenError("endpoint id is not canonical base32")
        return PeerId(raw)
    raise InvalidTokenError(f"endpoint id must be 64 hex or 52 base32 chars, got {len(text)}")


def encode_addr_json(addr: EndpointAddrInfo) -> bytes:
    """Serialise as iroh's compact serde JSON (the form inside tokens and ``serialized_addr``)."""
    entries: list[dict[str, str]] = [{"Relay": url} for url in sorted(set(addr.relay_urls))]
    entries += [{"Ip": ip} for ip in _sort_socket_addrs(set(addr.ip_addrs))]
    doc = {"id": addr.id_hex, "addrs": entries}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_addr_json(data: bytes | str) -> EndpointAddrInfo:
    """Parse and validate endpoint-address JSON; raises :class:`InvalidTokenError`."""
    if len(data) > MAX_TOKEN_CHARS:
        raise InvalidTokenError("address JSON is too long")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise InvalidTokenError("address is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise InvalidTokenError("address JSON must be an object")
    ident = doc.get("id")
    if not isinstance(ident, str):
        raise InvalidTokenError("address JSON lacks a string 'id'")
    raw_addrs = doc.get("addrs", [])
    if not isinstance(raw_addrs, list):
        raise InvalidTokenError("'addrs' must be a list")
    relays: list[str] = []
    ips: list[str] = []
    for entry in raw_addrs:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise InvalidTokenError("each address must be an object with one key")
        ((kind, value),) = entry.items()
        if not isinstance(value, str):
            raise InvalidTokenError(f"address value for {kind!r} must be a string")
        if kind == "Relay":
            relays.append(value)
        elif kind == "Ip":
            ips.append(value)
        # Other kinds (e.g. a newer iroh's custom transports) are skipped.
    return EndpointAddrInfo.create(ident, relays, ips)


@dataclass(frozen=True, slots=True)
class Invite:
    """A decoded invite token: where to dial, and the private mesh's key if it has one."""

    addr: EndpointAddrInfo
    mesh_key: bytes | None = None


def encode_token(addr: EndpointAddrInfo, mesh_key: bytes | None = None) -> str:
    """The invite token for ``addr``: base64url without padding of its JSON (with the mesh key
    of a private mesh)."""
    data = encode_addr_json(addr)
    if mesh_key is not None:
        if len(mesh_key) != _ID_BYTES:
            raise InvalidTokenError("a mesh key is 32 bytes")
        doc = json.loads(data)
        doc["mesh_key"] = mesh_key.hex()
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_token(token: str) -> EndpointAddrInfo:
    """Decode an invite token's address; raises :class:`InvalidTokenError` if malformed."""
    return decode_invite(token).addr


def decode_invite(token: str) -> Invite:
    """Decode an invite token; raises :class:`InvalidTokenError` with a reason if malformed."""
    raw = _token_bytes(token)
    try:
        addr = decode_addr_json(raw)
    except InvalidTokenError as exc:
        raise InvalidTokenError(f"invite token: {exc}") from exc
    doc = json.loads(raw)  # valid: decode_addr_json parsed it
    key_hex = doc.get("mesh_key")
    if key_hex is None:
        return Invite(addr)
    if (
        not isinstance(key_hex, str)
        or len(key_hex) != 2 * _ID_BYTES
        or not _HEX_CHARS.issuperset(key_hex)
    ):
        raise InvalidTokenError("invite token: 'mesh_key' must be 64 hex chars")
    return Invite(addr, bytes.fromhex(key_hex))


def _token_bytes(token: str) -> bytes:
    text = token.strip()
    if not text:
        raise InvalidTokenError("empty invite token")
    if len(text) > MAX_TOKEN_CHARS:
        raise InvalidTokenError("invite token is too long")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidTokenError("invite token is not valid base64url") from exc
    return raw


def _check_relay_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidTokenError(f"bad relay URL {url!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidTokenError(f"bad relay URL {url!r}")
    return url


def _split_socket_addr(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise InvalidTokenError(f"bad socket address {text!r}")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidTokenError(f"bad IPv6 address in {text!r}") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise InvalidTokenError(f"bad socket address {text!r}")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise InvalidTokenError(f"bad IPv4 address in {text!r}") from exc
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise InvalidTokenError(f"bad port in {text!r}")
    port = int(port_text)
    if port > 0xFFFF:
        raise InvalidTokenError(f"port out of range in {text!r}")
    return ip, port


def _canonical_socket_addr(text: str) -> str:
    ip, port = _split_socket_addr(text)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _sort_key(text: str) -> tuple[int, bytes, int]:
    ip, port = _split_socket_addr(text)
    return ip.version, ip.packed, port


def _sort_socket_addrs(addrs: set[str]) -> list[str]:
    return sorted(addrs, key=_sort_key)
