"""Listings, scoring and the --auto choice (pure)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh_llm.discovery import (
    DiscoveredMesh,
    DiscoveryError,
    Freshness,
    Join,
    MeshListing,
    StartNew,
    auto_model_for,
    filter_meshes,
    first_live,
    freshness,
    newest_per_publisher,
    score_mesh,
    smart_auto,
)
from mesh_llm.errors import TransportError

NOW = 1_800_000_000


def mesh(
    pub: str = "npub1a", at: int = NOW - 10, expires: int | None = NOW + 100, **fields: object
) -> DiscoveredMesh:
    listing = MeshListing(invite_token=f"tok-{pub}-{at}", **fields)  # type: ignore[arg-type]
    return DiscoveredMesh(listing, pub, at, expires)


def test_listing_json_round_trip_omits_absent_optionals() -> None:
    listing = MeshListing("tok", serving=("m",), node_count=2, total_vram_bytes=5)
    data = json.loads(listing.to_json())
    assert data == {
        "invite_token": "tok",
        "serving": ["m"],
        "wanted": [],
        "on_disk": [],
        "total_vram_bytes": 5,
        "node_count": 2,
        "client_count": 0,
        "max_clients": 0,
    }
    named = MeshListing("tok", name="lab", region="eu", mesh_id="ab")
    assert MeshListing.from_json(named.to_json()) == named


@pytest.mark.parametrize(
    "content",
    [
        "nope",
        "[]",
        "{}",
        '{"invite_token": ""}',
        '{"invite_token": "t", "serving": "m"}',
        '{"invite_token": "t", "serving": [1]}',
        '{"invite_token": "t", "node_count": -1}',
        '{"invite_token": "t", "node_count": true}',
        '{"invite_token": "t", "name": 3}',
    ],
)
def test_bad_listings_are_rejected(content: str) -> None:
    with pytest.raises(DiscoveryError):
        MeshListing.from_json(content)


def test_freshness_bands() -> None:
    assert freshness(NOW - 119, NOW) is Freshness.FRESH
    assert freshness(NOW - 120, NOW) is Freshness.OK
    assert freshness(NOW - 299, NOW) is Freshness.OK
    assert freshness(NOW - 300, NOW) is Freshness.STALE


def test_newest_per_publisher_drops_expired_and_sorts() -> None:
    old = mesh("npub1a", at=NOW - 50, node_count=9)
    new = mesh("npub1a", at=NOW - 5, node_count=1)
    expired = mesh("npub1b", expires=NOW - 1, node_count=50)
    big = mesh("npub1c", node_count=3, total_vram_bytes=10)
    bigger = mesh("npub1d", node_count=3, total_vram_bytes=20)
    assert newest_per_publisher([old, new, expired, big, bigger], NOW) == [bigger, big, new]


def test_filters() -> None:
    a = mesh("a", serving=("Qwen3-8B-Q4_K_M",), total_vram_bytes=int(24e9), region="EU")
    b = mesh("b", on_disk=("SmolLM2",), total_vram_bytes=int(8e9))
    assert filter_meshes([a, b], model="qwen3") == [a]
    assert filter_meshes([a, b], model="smol") == [b]
    assert filter_meshes([a, b], min_vram_gb=10) == [a]
    assert filter_meshes([a, b], region="eu") == [a]


def test_score_mesh_terms() -> None:
    assert score_mesh(mesh(), None) == 100
    assert score_mesh(mesh(name="mesh-llm"), None) == 400
    assert score_mesh(mesh(name="other"), None) == -100
    assert score_mesh(mesh(mesh_id="abc"), "abc") == 600
    assert score_mesh(mesh(max_clients=5, client_count=5), None) == -900
    assert score_mesh(mesh(max_clients=50, client_count=5), None) == 120
    assert score_mesh(mesh(max_clients=3, client_count=1), None) == 102
    assert score_mesh(mesh(node_count=30, serving=("a", "b"), wanted=("c",)), None) == (
        100 + 50 + 20 + 15
    )


def test_smart_auto() -> None:
    plain = mesh("a", node_count=1)
    default = mesh("b", name="mesh-llm")
    other = mesh("c", name="Lab")
    full = mesh("d", max_clients=1, client_count=1)
    assert smart_auto([], None, None) == StartNew()
    assert smart_auto([plain, default, other, full], None, None) == Join((default, plain))
    # A target name keeps exact matches (case-insensitive), even scoring below 0.
    assert smart_auto([plain, default, other], "lab", None) == Join((other,))
    assert smart_auto([plain, default], "lab", None) == StartNew()
    assert smart_auto([plain, default], None, plain.listing.mesh_id) == Join((default, plain))


def test_auto_model_pack() -> None:
    assert auto_model_for(200) == "MiniMax-M2.5-Q4_K_M"
    assert auto_model_for(24) == "Qwen3.5-27B-Q4_K_M"
    assert auto_model_for(8) == "Qwen3-8B-Q4_K_M"
    assert auto_model_for(0) == "Qwen3-4B-Q4_K_M"


async def test_first_live_skips_dead_and_silent_listings() -> None:
    silent, dead, live = mesh("silent"), mesh("dead"), mesh("live")
    said: list[str] = []

    async def dial(token: str) -> None:
        if "silent" in token:
            await asyncio.sleep(10)
        if "dead" in token:
            raise TransportError("connection refused")

    chosen = await first_live([silent, dead, live], dial, timeout_s=0.05, say=said.append)
    assert chosen is live
    assert any("did not answer within 0.05 s" in line for line in said)
    assert any("unreachable (connection refused)" in line for line in said)
    assert await first_live([dead], dial, timeout_s=0.05, say=said.append) is None


async def test_dead_listings_ranked_first_cost_one_probe_bound_together() -> None:
    silent = [mesh(f"silent{i}") for i in range(3)]
    live = mesh("live")
    dialled: list[str] = []

    async def dial(token: str) -> None:
        dialled.append(token)
        if "silent" in token:
            await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    started = loop.time()
    chosen = await first_live([*silent, live], dial, timeout_s=0.3, say=lambda _: None)
    elapsed = loop.time() - started
    assert chosen is live
    assert len(dialled) == 4
    assert elapsed < 0.6, elapsed
    # Taken in rank order: a live mesh ranked first wins even when a lower one answers too.
    first = await first_live([live, mesh("also-live")], dial, timeout_s=0.3, say=lambda _: None)
    assert first is live
