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
from mesh_llm.discovery.timing import DiscoveryTiming
from mesh_llm.discovery.watchdog import (
    WATCHDOG_INTERVAL_S,
    WATCHDOG_RECHECK_S,
    listing_node_id,
    merge_target,
    needs_takeover,
    watchdog_delay,
)

__all__ = [
    "AUTO_MODEL_PACK",
    "DEFAULT_MESH_NAME",
    "DEFAULT_NOSTR_RELAYS",
    "LISTING_TTL_S",
    "PROBE_TIMEOUT_S",
    "WATCHDOG_INTERVAL_S",
    "WATCHDOG_RECHECK_S",
    "DiscoveredMesh",
    "DiscoveryError",
    "DiscoveryTiming",
    "Freshness",
    "Join",
    "MeshListing",
    "NostrDirectory",
    "StartNew",
    "auto_model_for",
    "filter_meshes",
    "first_live",
    "freshness",
    "listing_node_id",
    "load_or_create_nostr_keys",
    "merge_target",
    "needs_takeover",
    "newest_per_publisher",
    "score_mesh",
    "smart_auto",
    "watchdog_delay",
]
