"""What a mesh publishes on Nostr (docs/DESIGN.md, "Discovery"): the ``MeshListing`` JSON of a
kind-31990 event, and a listing as discovered (publisher, times).

Pure: parsing validates untrusted event content and never raises anything but
``DiscoveryError``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import MeshLlmError

__all__ = [
    "DiscoveredMesh",
    "DiscoveryError",
    "Freshness",
    "MeshListing",
    "freshness",
]

MAX_CONTENT_BYTES = 64 * 1024
MAX_NAMES = 256


class DiscoveryError(MeshLlmError):
    """A listing that cannot be read, or a relay that cannot be reached."""


@dataclass(frozen=True, slots=True)
class MeshListing:
    invite_token: str
    serving: tuple[str, ...] = ()
    wanted: tuple[str, ...] = ()
    on_disk: tuple[str, ...] = ()
    total_vram_bytes: int = 0
    node_count: int = 0
    client_count: int = 0
    max_clients: int = 0
    """0: unlimited."""
    name: str | None = None
    region: str | None = None
    mesh_id: str | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "invite_token": self.invite_token,
            "serving": list(self.serving),
            "wanted": list(self.wanted),
            "on_disk": list(self.on_disk),
            "total_vram_bytes": self.total_vram_bytes,
            "node_count": self.node_count,
            "client_count": self.client_count,
            "max_clients": self.max_clients,
        }
        for key in ("name", "region", "mesh_id"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return json.dumps(data)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.to_json())
        return result

    @classmethod
    def from_json(cls, content: str) -> MeshListing:
        if len(content.encode()) > MAX_CONTENT_BYTES:
            raise DiscoveryError("listing over 64 KiB")
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise DiscoveryError(f"listing is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DiscoveryError("listing is not a JSON object")
        token = data.get("invite_token")
        if not isinstance(token, str) or not token:
            raise DiscoveryError("listing has no invite_token")
        return cls(
            invite_token=token,
            serving=_names(data, "serving"),
            wanted=_names(data, "wanted"),
            on_disk=_names(data, "on_disk"),
            total_vram_bytes=_count(data, "total_vram_bytes"),
            node_count=_count(data, "node_count"),
            client_count=_count(data, "client_count"),
            max_clients=_count(data, "max_clients"),
            name=_text(data, "name"),
            region=_text(data, "region"),
            mesh_id=_text(data, "mesh_id"),
        )


def _names(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise DiscoveryError(f"listing field {key} is not a list of names")
    if not all(isinstance(v, str) for v in value):
        raise DiscoveryError(f"listing field {key} is not a list of names")
    return tuple(value)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DiscoveryError(f"listing field {key} is not a count")
    return value


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DiscoveryError(f"listing field {key} is not a string")
    return value


class Freshness(enum.Enum):
    FRESH = "fresh"
    OK = "ok"
    STALE = "stale"


def freshness(published_at: int, now: float) -> Freshness:
    """< 120 s fresh, < 300 s ok, else stale."""
    age = now - published_at
    if age < 120:
        return Freshness.FRESH
    if age < 300:
        return Freshness.OK
    return Freshness.STALE


@dataclass(frozen=True, slots=True)
class DiscoveredMesh:
    listing: MeshListing
    publisher_npub: str
    published_at: int
    """Unix seconds (the event's created_at)."""
    expires_at: int | None
    """Unix seconds (the event's expiration tag)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "listing": self.listing.to_dict(),
            "publisher_npub": self.publisher_npub,
            "published_at": self.published_at,
            "expires_at": self.expires_at,
        }
