"""Model assignment for a node without --model, and standby promotion (pure)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.inference.assignment import (
    Assignment,
    AssignmentKind,
    ColdStart,
    DemandView,
    LoaderCandidate,
    LocalModel,
    auto_pack_assignment,
    check_unserved_model,
    choose_cold_start,
    node_hash,
    pick_model_assignment,
)

NOW = 1_800_000_000.0
GB = 1_000_000_000
BIG = LocalModel("big", 2 * GB)
HUGE = LocalModel("huge", 50 * GB)
QWEN = LocalModel("qwen", 1 * GB)
TINY = LocalModel("tiny", 100_000_000)


def recent(count: int, age: float = 10.0, pinned: bool = False) -> DemandView:
    return DemandView(count, int(NOW - age), pinned)


def pick(**kw: object) -> Assignment:
    args: dict[str, object] = {
        "node_id": b"\x01" * 32,
        "capacity": 8 * GB,
        "demand": {},
        "servers": {},
        "on_disk": [],
        "catalog": [],
        "now": NOW,
    }
    args.update(kw)
    return pick_model_assignment(**args)  # type: ignore[arg-type]


def test_demanded_unserved_on_disk_model_first() -> None:
    got = pick(demand={"big": recent(3)}, on_disk=[QWEN, BIG], servers={"qwen": 1})
    assert (got.kind, got.model) == (AssignmentKind.SERVE, "big")


def test_demand_older_than_a_day_is_inactive_unless_pinned() -> None:
    stale = {"big": recent(3, age=90_000)}
    assert pick(demand=stale, on_disk=[BIG]).kind is AssignmentKind.STANDBY
    pinned = {"big": recent(3, age=90_000, pinned=True)}
    assert pick(demand=pinned, on_disk=[BIG]).model == "big"


def test_tier_one_ignores_files_too_small_or_too_big() -> None:
    demand = {"tiny": recent(5), "huge": recent(5)}
    assert pick(demand=demand, on_disk=[TINY, HUGE]).kind is AssignmentKind.STANDBY


def test_joiners_spread_over_several_wanted_models() -> None:
    models = [LocalModel(f"m{i}", GB) for i in range(4)]
    demand = {m.name: recent(1) for m in models}
    ids = [hashlib.sha256(bytes([i])).digest() for i in range(32)]  # node ids are random keys
    picks = {pick(node_id=node_id, demand=demand, on_disk=models).model for node_id in ids}
    assert len(picks) > 1


def test_under_served_on_disk_model_fewest_servers_then_most_demand() -> None:
    a, b, c = (LocalModel(n, GB) for n in "abc")
    servers = {"a": 3, "b": 1, "c": 1}
    demand = {"b": recent(2), "c": recent(9)}
    got = pick(on_disk=[a, b, c], servers=servers, demand=demand)
    assert (got.kind, got.model) == (AssignmentKind.SERVE, "c")


def test_unserved_catalog_model_is_downloaded() -> None:
    got = pick(catalog=[HUGE, QWEN], servers={"other": 1})
    assert (got.kind, got.model) == (AssignmentKind.DOWNLOAD, "qwen")


def test_nothing_fits_is_standby() -> None:
    assert pick(catalog=[HUGE], capacity=GB).kind is AssignmentKind.STANDBY


def test_node_hash_is_the_reference_fold() -> None:
    assert node_hash(b"") == 0
    assert node_hash(b"\x01\x02") == 31 + 2
    assert node_hash(b"\xff" * 32) < 2**64


def promote(**kw: object) -> Assignment:
    args: dict[str, object] = {
        "capacity": 8 * GB,
        "demand": {},
        "servers": {},
        "on_disk": [BIG, QWEN],
        "now": NOW,
    }
    args.update(kw)
    return check_unserved_model(**args)  # type: ignore[arg-type]


def test_standby_takes_the_most_requested_unserved_model() -> None:
    demand = {"big": recent(2), "qwen": recent(7)}
    got = promote(demand=demand)
    assert (got.kind, got.model) == (AssignmentKind.SERVE, "qwen")


def test_standby_never_downloads() -> None:
    assert promote(demand={"elsewhere": recent(50)}).kind is AssignmentKind.STANDBY


def test_imbalance_rule_three_times_and_at_least_ten() -> None:
    servers = {"big": 1, "qwen": 1}
    hot = promote(demand={"big": recent(30), "qwen": recent(10)}, servers=servers)
    assert (hot.kind, hot.model) == (AssignmentKind.SERVE, "big")
    balanced = promote(demand={"big": recent(29), "qwen": recent(10)}, servers=servers)
    assert balanced.kind is AssignmentKind.STANDBY
    too_few = promote(demand={"big": recent(9), "qwen": recent(1)}, servers=servers)
    assert too_few.kind is AssignmentKind.STANDBY


def test_requests_per_server_not_raw_counts() -> None:
    got = promote(demand={"big": recent(60), "qwen": recent(10)}, servers={"big": 6, "qwen": 1})
    assert got.kind is AssignmentKind.STANDBY  # 10 per server each


def test_single_served_model_needs_ten_requests() -> None:
    assert promote(demand={"big": recent(10)}, servers={"big": 1}).model == "big"
    assert promote(demand={"big": recent(9)}, servers={"big": 1}).kind is AssignmentKind.STANDBY


def test_old_demand_does_not_promote() -> None:
    got = promote(demand={"big": recent(100, age=4_000)}, servers={"big": 1})
    assert got.kind is AssignmentKind.STANDBY


@given(
    counts=st.dictionaries(st.sampled_from(["big", "qwen", "x"]), st.integers(0, 100)),
    served=st.dictionaries(st.sampled_from(["big", "qwen", "x"]), st.integers(0, 4)),
)
def test_promotion_only_ever_picks_a_model_on_disk(
    counts: dict[str, int], served: dict[str, int]
) -> None:
    got = promote(demand={m: recent(c) for m, c in counts.items()}, servers=served)
    assert got.model in (None, "big", "qwen")
    assert (got.model is None) == (got.kind is AssignmentKind.STANDBY)


# --- cold start: who loads a model for a waiting request -------------------------------------

PEER_A = b"a" * 32
PEER_B = b"b" * 32


def test_cold_start_on_disk_beats_download() -> None:
    cands = [
        LoaderCandidate(None, 40 * GB, None),
        LoaderCandidate(PEER_A, 5 * GB, 2 * GB),
    ]
    pick = choose_cold_start("m", cands, catalog_bytes=2 * GB)
    assert pick == ColdStart(PEER_A, False, 2 * GB, "on the disk of a peer")


def test_cold_start_this_node_beats_a_peer() -> None:
    cands = [
        LoaderCandidate(PEER_A, 80 * GB, 2 * GB),
        LoaderCandidate(None, 3 * GB, 2 * GB),
    ]
    pick = choose_cold_start("m", cands, catalog_bytes=None)
    assert pick == ColdStart(None, False, 2 * GB, "on the disk of this node")


def test_cold_start_most_free_room_among_peers() -> None:
    cands = [
        LoaderCandidate(PEER_A, 5 * GB, 2 * GB),
        LoaderCandidate(PEER_B, 9 * GB, 2 * GB),
        LoaderCandidate(None, 1 * GB, None),
    ]
    pick = choose_cold_start("m", cands, catalog_bytes=None)
    assert isinstance(pick, ColdStart)
    assert pick.node == PEER_B
    assert not pick.download


def test_cold_start_nothing_fits_gives_the_figures() -> None:
    cands = [
        LoaderCandidate(None, 1 * GB, 10 * GB),
        LoaderCandidate(PEER_A, 4 * GB, None),
    ]
    pick = choose_cold_start("m", cands, catalog_bytes=None)
    assert pick == (
        "no node has room for m: it needs 11.00 GB and the most any node has free is 4.00 GB"
    )


def test_cold_start_unknown_model_is_none() -> None:
    cands = [LoaderCandidate(None, 40 * GB, None), LoaderCandidate(PEER_A, 40 * GB, None)]
    assert choose_cold_start("m", cands, catalog_bytes=None) is None
    assert choose_cold_start("m", [], catalog_bytes=None) is None


def test_cold_start_catalog_download_when_nobody_has_it() -> None:
    cands = [
        LoaderCandidate(PEER_A, 6 * GB, None),
        LoaderCandidate(None, 3 * GB, None),
    ]
    pick = choose_cold_start("m", cands, catalog_bytes=2 * GB)
    assert pick == ColdStart(None, True, 2 * GB, "downloaded from the catalog")
    # Too big for everyone: the message, not a download.
    msg = choose_cold_start("m", cands, catalog_bytes=10 * GB)
    assert msg == (
        "no node has room for m: it needs 11.00 GB and the most any node has free is 6.00 GB"
    )


# -- --auto started a mesh: auto_model_pack (spec surface §4) -----------------------------------

GB_ = 1_000_000_000
PACK = [(24 * GB_, "big-27b"), (8 * GB_, "mid-8b"), (0, "small-4b")]
CATALOG = [
    LocalModel("big-27b", 20 * GB_),
    LocalModel("mid-8b", 5 * GB_),
    LocalModel("small-4b", int(2.5 * GB_)),
    LocalModel("tiny", GB_ // 2),
]


def test_auto_pack_picks_the_tier_for_the_nodes_memory_as_a_download() -> None:
    pick = auto_pack_assignment(capacity=10 * GB_, pack=PACK, catalog=CATALOG, on_disk=[])
    assert (pick.kind, pick.model) == (AssignmentKind.DOWNLOAD, "mid-8b")
    assert "auto_model_pack for 10.0 GB" in pick.reason
    top = auto_pack_assignment(capacity=80 * GB_, pack=PACK, catalog=CATALOG, on_disk=[])
    assert top.model == "big-27b"


def test_auto_pack_model_on_disk_is_served_from_there() -> None:
    disk = [LocalModel("mid-8b", 5 * GB_)]
    pick = auto_pack_assignment(capacity=10 * GB_, pack=PACK, catalog=CATALOG, on_disk=disk)
    assert (pick.kind, pick.model) == (AssignmentKind.SERVE, "mid-8b")


def test_a_tier_that_misses_85_percent_falls_back_to_the_largest_fitting_on_disk_first() -> None:
    # 24 GB reaches the 27B tier, but 20 GB x 1.1 = 22 GB > 0.85 x 24 GB = 20.4 GB.
    pick = auto_pack_assignment(capacity=24 * GB_, pack=PACK, catalog=CATALOG, on_disk=[])
    assert pick.model == "mid-8b"
    assert "largest catalog model" in pick.reason
    disk = [LocalModel("tiny", GB_ // 2)]
    on_disk = auto_pack_assignment(capacity=24 * GB_, pack=PACK, catalog=CATALOG, on_disk=disk)
    assert (on_disk.kind, on_disk.model) == (AssignmentKind.SERVE, "tiny")


def test_auto_pack_with_nothing_that_fits_stands_by() -> None:
    pick = auto_pack_assignment(capacity=GB_ // 4, pack=PACK, catalog=CATALOG, on_disk=[])
    assert (pick.kind, pick.model) == (AssignmentKind.STANDBY, None)
