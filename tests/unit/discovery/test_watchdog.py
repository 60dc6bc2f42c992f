"""The watchdog takeover and the unpublish-and-merge rule, as pure decisions."""

from __future__ import annotations

import random

import pytest

from mesh_llm.discovery import (
    WATCHDOG_INTERVAL_S,
    DiscoveredMesh,
    DiscoveryTiming,
    MeshListing,
    listing_node_id,
    merge_target,
    needs_takeover,
    watchdog_delay,
)
from mesh_llm.protocol import EndpointAddrInfo, encode_token

ME, PUB, OTHER, FAR = ("11" * 32, "22" * 32, "33" * 32, "44" * 32)
MESH = "ab" * 8


def token(node: str) -> str:
    return encode_token(EndpointAddrInfo.create(node, ip_addrs=["10.0.0.1:4"]))


def listed(
    node: str, *, mesh_id: str | None = MESH, nodes: int = 1, name: str | None = None
) -> DiscoveredMesh:
    listing = MeshListing(token(node), node_count=nodes, mesh_id=mesh_id, name=name)
    return DiscoveredMesh(listing, f"npub1{node[:8]}", 1000, 1120)


def test_takeover_only_when_no_live_publisher_lists_our_mesh() -> None:
    members = {ME, PUB}
    live = [listed(PUB)]
    assert not needs_takeover(live, mesh_id=MESH, members=members, has_peers=True, serves=True)
    # The publisher was killed: its listing lingers, but its node is no longer a member.
    assert needs_takeover(live, mesh_id=MESH, members={ME}, has_peers=True, serves=True)
    assert needs_takeover([], mesh_id=MESH, members={ME}, has_peers=False, serves=True)
    # Another mesh's listing does not count; our own listing does.
    other = [listed(OTHER, mesh_id="cd" * 8)]
    assert needs_takeover(other, mesh_id=MESH, members={ME, OTHER}, has_peers=True, serves=True)
    assert not needs_takeover([listed(ME)], mesh_id=MESH, members={ME}, has_peers=True, serves=True)


def test_no_takeover_without_mesh_id_or_anything_to_offer() -> None:
    assert not needs_takeover([], mesh_id=None, members={ME}, has_peers=True, serves=True)
    assert not needs_takeover([], mesh_id=MESH, members={ME}, has_peers=False, serves=False)


def test_watchdog_delays_stay_in_bounds() -> None:
    rng = random.Random(1)
    delays = [watchdog_delay(WATCHDOG_INTERVAL_S, rng) for _ in range(200)]
    assert all(20.0 <= d <= 35.0 for d in delays)
    assert max(delays) - min(delays) > 10  # jittered


def test_merge_into_a_larger_mesh_with_our_id_or_any_unnamed_one() -> None:
    ours_bigger = listed(OTHER, nodes=3)
    unnamed_bigger = listed(FAR, mesh_id="cd" * 8, nodes=5)
    named_bigger = listed(FAR, mesh_id="ef" * 8, nodes=9, name="lab")
    meshes = [ours_bigger, unnamed_bigger, named_bigger]
    # Unnamed: the largest of ours-by-id and unnamed ones (never a named mesh).
    got = merge_target(meshes, mesh_id=MESH, named=False, own_node_id=ME, serving_peers=0)
    assert got is unnamed_bigger
    # Named: only a listing of our own mesh id.
    got = merge_target(meshes, mesh_id=MESH, named=True, own_node_id=ME, serving_peers=0)
    assert got is ours_bigger


def test_no_merge_with_serving_peers_or_into_an_equal_or_own_listing() -> None:
    bigger = listed(OTHER, nodes=3)
    assert (
        merge_target([bigger], mesh_id=MESH, named=False, own_node_id=ME, serving_peers=1) is None
    )
    lonely = listed(OTHER, nodes=1)  # two lonely nodes never chase each other
    assert (
        merge_target([lonely], mesh_id=MESH, named=False, own_node_id=ME, serving_peers=0) is None
    )
    own = listed(ME, nodes=4)
    assert merge_target([own], mesh_id=MESH, named=False, own_node_id=ME, serving_peers=0) is None
    broken = DiscoveredMesh(MeshListing("not-a-token", node_count=4), "npub1x", 1000, 1120)
    assert listing_node_id(broken) is None
    assert (
        merge_target([broken], mesh_id=None, named=False, own_node_id=ME, serving_peers=0) is None
    )


def test_discovery_timing_scales_every_interval() -> None:
    fast = DiscoveryTiming().scaled(0.1)
    assert fast.publish_interval == pytest.approx(6.0)
    assert fast.watchdog_interval == pytest.approx((2.0, 3.5))
    assert fast.watchdog_recheck == pytest.approx((0.3, 1.0))
    assert (fast.lonely_check, fast.lonely_after) == pytest.approx((3.0, 9.0))
    assert fast.client_retry == pytest.approx(1.5)
    assert DiscoveryTiming().watchdog_interval == WATCHDOG_INTERVAL_S
    with pytest.raises(ValueError, match="positive"):
        DiscoveryTiming().scaled(0)
