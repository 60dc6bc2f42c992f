"""Nostr discovery (docs/DESIGN.md, "Discovery"): mesh listings, choosing a mesh to join, and
the nostr-sdk adapter that publishes and fetches them."""

from mesh_llm.discovery.choice import (
    AUTO_MODEL_PACK,
    DEFAULT_MESH_NAME,
    Join,
    StartNew,
    auto_model_for,
    filter_meshes,
    newest_per_publisher,
    score_mesh,
    smart_auto,
)
from mesh_llm.discovery.listing import (
    DiscoveredMesh,
    DiscoveryError,
    Freshness,
    MeshListing,
    freshness,
)
from mesh_llm.discovery.nostr import (
    DEFAULT_NOSTR_RELAYS,
    LISTING_TTL_S,
    NostrDirectory,
    load_or_create_nostr_keys,
)
from mesh_llm.discovery.probe import PROBE_TIMEOUT_S, first_live

__all__ = [
    "AUTO_MODEL_PACK",
    "DEFAULT_MESH_NAME",
    "DEFAULT_NOSTR_RELAYS",
    "LISTING_TTL_S",
    "PROBE_TIMEOUT_S",
    "DiscoveredMesh",
    "DiscoveryError",
    "Freshness",
    "Join",
    "MeshListing",
    "NostrDirectory",
    "StartNew",
    "auto_model_for",
    "filter_meshes",
    "first_live",
    "freshness",
    "load_or_create_nostr_keys",
    "newest_per_publisher",
    "score_mesh",
    "smart_auto",
]
