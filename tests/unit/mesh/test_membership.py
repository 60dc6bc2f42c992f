"""The membership state machine, rule by rule (spec §5, §7, §8 and the fast liveness probe)."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.mesh import (
    Action,
    BroadcastPeerDown,
    ChangeReason,
    CheckReachable,
    CloseConnection,
    Connect,
    ConnectReason,
    Membership,
    MeshIdAdopted,
    PeersChanged,
    Probe,
    SendGossip,
    Timing,
)
from mesh_llm.protocol.frames import (
    DemandEntry,
    GossipFrame,
    NodeRole,
    PeerAnnouncement,
    PeerDown,
    PeerLeaving,
    RouteEntry,
)
from mesh_llm.protocol.token import EndpointAddrInfo

T0 = 1000.0
ME = bytes([1]) * 32
A, B, C, D = (bytes([i]) * 32 for i in (2, 3, 4, 5))


def addr(pid: bytes, n: int = 1) -> EndpointAddrInfo:
    return EndpointAddrInfo.create(
        pid.hex(), ip_addrs=[f"10.0.0.{i}:7000" for i in range(1, n + 1)]
    )


def ann(pid: bytes, *, n_addrs: int = 1, **kw: object) -> PeerAnnouncement:
    role = kw.pop("role", NodeRole.WORKER)
    assert isinstance(role, NodeRole)
    return PeerAnnouncement(
        endpoint_id=pid,
        role=role,
        http_port=9337 if role is NodeRole.HOST else None,
        addr=addr(pid, n_addrs) if n_addrs else None,
        **kw,  # type: ignore[arg-type]
    )


def frame(
    sender: bytes, *others: PeerAnnouncement, me: PeerAnnouncement | None = None
) -> GossipFrame:
    return GossipFrame(sender_id=sender, peers=(*others, me or ann(sender)))


def new(now: float = T0, **kw: object) -> Membership:
    return Membership(ME, now=now, rng=random.Random(0), **kw)  # type: ignore[arg-type]


def member(
    m: Membership,
    pid: bytes,
    now: float = T0,
    *others: PeerAnnouncement,
    me: PeerAnnouncement | None = None,
) -> list[Action]:
    """``pid`` connects to us and gossips (``others`` as hearsay, ``me`` as its own entry)."""
    out = m.connection_up(pid, True, now)
    return out + m.gossip_received(pid, frame(pid, *others, me=me), now)


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def changes(actions: list[Action]) -> list[tuple[ChangeReason, bytes]]:
    return [(a.reason, a.peer_id) for a in actions if isinstance(a, PeersChanged)]


def run(
    m: Membership, until: float, start: float, answering: tuple[bytes, ...] = ()
) -> list[Action]:
    """Tick at every deadline from ``start`` to ``until``, collecting actions; probes to the
    ``answering`` peers are answered at once."""
    out: list[Action] = []
    now = start
    while True:
        now = max(now, m.next_deadline())
        if now > until:
            return out
        actions = m.tick(now)
        out += actions
        for action in actions:
            if isinstance(action, Probe) and action.peer_id in answering:
                m.probe_result(action.peer_id, True, 1, now)


# --------------------------------------------------------------------------------------------
# Admission: only a peer's own gossip over its own connection admits it


def test_transitive_entry_is_known_but_not_admitted() -> None:
    m = new()
    member(m, A, T0, ann(B))
    assert m.peer_ids() == sorted([A, B])
    assert m.is_admitted(A)
    assert not m.is_admitted(B)
    view = {v.peer_id: v for v in m.peers_view(T0)}
    assert view[A].direct
    assert view[A].connected
    assert not view[B].direct
    assert not view[B].connected


def test_connection_alone_does_not_admit() -> None:
    m = new()
    m.connection_up(A, True, T0)
    assert not m.is_admitted(A)
    assert m.peer_ids() == []


def test_frame_without_the_senders_own_entry_is_ignored() -> None:
    m = new()
    m.connection_up(A, True, T0)
    assert m.gossip_received(A, GossipFrame(sender_id=A, peers=(ann(B),)), T0) == []
    assert m.peer_ids() == []


def test_frame_from_another_sender_than_the_connection_is_ignored() -> None:
    m = new()
    assert m.gossip_received(A, frame(B), T0) == []
    assert m.peer_ids() == []


def test_transitive_peer_is_admitted_once_it_gossips_itself() -> None:
    m = new()
    member(m, A, T0, ann(B))
    out = member(m, B, T0 + 1)
    assert changes(out) == [(ChangeReason.JOINED, B)]
    assert m.is_admitted(B)
    assert not of_type(out, SendGossip)  # others already knew B: no announcement


def test_gossip_about_us_is_skipped() -> None:
    m = new()
    m.update_self(ann(ME, role=NodeRole.HOST, serving_models=("x",)), T0)
    member(m, A, T0, ann(ME, role=NodeRole.CLIENT))
    assert ME not in m.peer_ids()
    assert m.self_announcement.role is NodeRole.HOST


def test_new_member_is_announced_to_the_other_members() -> None:
    m = new()
    member(m, A)
    member(m, B)
    out = member(m, C)
    assert sorted(a.peer_id for a in of_type(out, SendGossip)) == [A, B]  # type: ignore[attr-defined]
    assert changes(out) == [(ChangeReason.JOINED, C)]


# --------------------------------------------------------------------------------------------
# Entries: direct vs transitive update rules


def test_self_entry_without_address_keeps_the_known_one() -> None:
    m = new()
    member(m, A)
    m.gossip_received(A, frame(A, me=ann(A, n_addrs=0, version="2")), T0 + 1)
    got = m.announcement(A)
    assert got is not None
    assert got.addr == addr(A)
    assert got.version == "2"


def test_transitive_update_does_not_refresh_last_seen() -> None:
    m = new()
    member(m, A, T0, ann(B))
    m.gossip_received(A, frame(A, ann(B, version="2")), T0 + 100)
    view = {v.peer_id: v for v in m.peers_view(T0 + 100)}
    assert view[B].version == "2"
    assert view[B].last_seen_age == 100


def test_transitive_address_replaced_only_by_one_as_rich() -> None:
    m = new()
    member(m, A, T0, ann(B, n_addrs=2))
    m.gossip_received(A, frame(A, ann(B, n_addrs=1, version="2")), T0 + 1)
    got = m.announcement(B)
    assert got is not None
    assert got.addr == addr(B, 2)
    assert got.version == "2"
    m.gossip_received(A, frame(A, ann(B, n_addrs=3)), T0 + 2)
    got = m.announcement(B)
    assert got is not None
    assert got.addr == addr(B, 3)


def test_hearsay_never_overwrites_what_a_member_said_itself() -> None:
    m = new()
    m.connection_up(B, True, T0)
    m.gossip_received(B, frame(B, me=ann(B, role=NodeRole.HOST, hosted_models=("m",))), T0)
    member(m, A, T0 + 1, ann(B, role=NodeRole.HOST, hosted_models=("evil",)))
    got = m.announcement(B)
    assert got is not None
    assert got.hosted_models == ("m",)


# --------------------------------------------------------------------------------------------
# The gossip frame


def test_gossip_frame_lists_known_peers_then_self_entry_last() -> None:
    m = new(mesh_id="mesh-1")
    m.update_self(ann(ME, role=NodeRole.HOST, hosted_models=("m",)), T0)
    m.record_request("m", T0)
    member(m, A, T0, replace(ann(B), mesh_id="other", demand=(DemandEntry("x", 1, 1),)))
    out = m.gossip_frame(T0)
    assert out.sender_id == ME
    assert [e.endpoint_id for e in out.peers] == [A, B, ME]
    me = out.peers[-1]
    assert me.mesh_id == "mesh-1"
    assert [d.model_name for d in me.demand] == ["m"]  # hearsay demand is not merged
    assert me.hosted_models_known is True
    assert all(e.mesh_id is None and not e.demand for e in out.peers[:-1])


def test_gossip_horizon_is_180_seconds_since_last_proof_of_life() -> None:
    m = new()
    member(m, A, T0, ann(B))  # B: transitive, inserted at T0 and never refreshed
    m.heard_from(A, T0 + 179.9)
    assert [e.endpoint_id for e in m.gossip_frame(T0 + 179.9).peers] == [A, B, ME]
    m.heard_from(A, T0 + 180)
    assert [e.endpoint_id for e in m.gossip_frame(T0 + 180).peers] == [A, ME]


def test_probe_answers_keep_a_member_in_gossip() -> None:
    m = new()
    member(m, A)
    m.probe_result(A, True, 5, T0 + 500)
    assert [e.endpoint_id for e in m.gossip_frame(T0 + 600).peers] == [A, ME]


# --------------------------------------------------------------------------------------------
# mesh_id


def test_joiner_adopts_the_first_mesh_id_from_a_direct_peer_only() -> None:
    m = new()
    out = member(
        m, A, T0, replace(ann(B), mesh_id="from-hearsay"), me=replace(ann(A), mesh_id="m1")
    )
    assert m.mesh_id == "m1"
    assert of_type(out, MeshIdAdopted) == [MeshIdAdopted("m1")]
    out = member(m, C, T0, me=replace(ann(C), mesh_id="m2"))
    assert m.mesh_id == "m1"
    assert not of_type(out, MeshIdAdopted)


def test_transitive_mesh_id_is_not_adopted() -> None:
    m = new()
    member(m, A, T0, replace(ann(B), mesh_id="from-hearsay"))
    assert m.mesh_id is None


def test_originator_keeps_its_mesh_id() -> None:
    m = new(mesh_id="mine")
    member(m, A, T0, me=replace(ann(A), mesh_id="theirs"))
    assert m.mesh_id == "mine"


def test_a_merging_node_takes_the_mesh_id_of_the_node_it_merges_into() -> None:
    """The unpublish-and-merge rule: the node leaves its own mesh for the target's, so it takes
    the target's mesh id (the one exception to "adopt only when none"), once."""
    m = new(mesh_id="mine")
    out = m.merge(addr(A), T0)
    assert m.merging
    assert [(a.addr.id_bytes, a.reason) for a in of_type(out, Connect)] == [(A, ConnectReason.JOIN)]
    assert m.mesh_id == "mine"
    out = member(m, A, T0, me=replace(ann(A), mesh_id="theirs"))
    assert m.mesh_id == "theirs"
    assert not m.merging
    assert of_type(out, MeshIdAdopted) == [MeshIdAdopted("theirs")]
    assert m.gossip_frame(T0).peers[-1].mesh_id == "theirs"
    out = m.gossip_received(A, frame(A, me=replace(ann(A), mesh_id="later")), T0 + 1)
    assert m.mesh_id == "theirs"
    assert not of_type(out, MeshIdAdopted)


def test_a_merge_adopts_only_from_its_target() -> None:
    m = new(mesh_id="mine")
    m.merge(addr(A), T0)
    out = member(m, C, T0, me=replace(ann(C), mesh_id="c-mesh"))
    assert m.mesh_id == "mine"
    assert not of_type(out, MeshIdAdopted)
    assert m.merging
    member(m, A, T0, replace(ann(B), mesh_id="hearsay"), me=ann(A))  # no mesh id yet
    assert m.mesh_id == "mine"
    m.gossip_received(A, frame(A, me=replace(ann(A), mesh_id="theirs")), T0 + 1)
    assert m.mesh_id == "theirs"


def test_a_merge_into_a_connected_peer_gossips_and_adopts_its_reply() -> None:
    m = new(mesh_id="mine")
    member(m, A, T0, me=replace(ann(A), mesh_id="theirs"))
    assert m.mesh_id == "mine"
    out = m.merge(addr(A), T0 + 1)
    assert of_type(out, SendGossip) == [SendGossip(A, discover=True)]
    out = m.gossip_received(A, frame(A, me=replace(ann(A), mesh_id="theirs")), T0 + 1)
    assert m.mesh_id == "theirs"
    assert of_type(out, MeshIdAdopted) == [MeshIdAdopted("theirs")]


def test_a_merge_with_no_mesh_id_yet_takes_the_target_s_not_another_peer_s() -> None:
    m = new()
    m.merge(addr(A), T0)
    member(m, C, T0, me=replace(ann(C), mesh_id="c-mesh"))
    assert m.mesh_id == "c-mesh"  # the reference's rule: the first one seen
    assert m.merging
    member(m, A, T0, me=replace(ann(A), mesh_id="theirs"))
    assert m.mesh_id == "theirs"
    assert not m.merging


def test_a_failed_merge_dial_leaves_the_mesh_id_alone() -> None:
    m = new(mesh_id="mine")
    m.merge(addr(A), T0)
    m.connect_failed(A, T0 + 1, "timed out")
    assert not m.merging
    member(m, A, T0 + 2, me=replace(ann(A), mesh_id="theirs"))
    assert m.mesh_id == "mine"


def test_a_merge_into_the_same_mesh_changes_nothing() -> None:
    m = new(mesh_id="same")
    m.merge(addr(A), T0)
    out = member(m, A, T0, me=replace(ann(A), mesh_id="same"))
    assert m.mesh_id == "same"
    assert not of_type(out, MeshIdAdopted)


# --------------------------------------------------------------------------------------------
# Demand


def test_demand_merges_max_per_field() -> None:
    m = new(wall_offset=1_000_000.0)
    m.record_request("m", T0)  # unix 1_001_000, count 1
    member(m, A, T0, me=replace(ann(A), demand=(DemandEntry("m", 900, 7), DemandEntry("n", 5, 1))))
    member(m, B, T0, me=replace(ann(B), demand=(DemandEntry("n", 9, 0),)))
    assert m.demand() == (DemandEntry("m", 1_001_000, 7), DemandEntry("n", 9, 1))


def test_demand_gc_after_24h_unless_still_requested() -> None:
    m = new(wall_offset=0.0)
    demand = tuple(DemandEntry(x, int(T0), 1) for x in ("mine", "theirs", "nobody"))
    m.update_self(replace(ann(ME), requested_models=("mine",)), T0)
    member(m, A, T0, me=replace(ann(A), demand=demand, requested_models=("theirs",)))
    for now in (T0 + 86000, T0 + 86401):  # heartbeat rounds run the GC
        m.heard_from(A, now)
        m.tick(now)
        if now < T0 + 86400:
            assert len(m.demand()) == 3
    assert [d.model_name for d in m.demand()] == ["mine", "theirs"]


# --------------------------------------------------------------------------------------------
# Liveness probe and death


def test_connected_members_are_probed_every_second() -> None:
    m = new()
    member(m, A)
    m.connection_up(B, True, T0)  # connected, never gossiped: not probed
    assert m.next_deadline() == T0 + 1
    assert m.tick(T0 + 1) == [Probe(A)]
    m.probe_result(A, True, 3, T0 + 1.003)
    assert m.tick(T0 + 2) == [Probe(A)]


def test_silent_member_is_dead_after_3s_and_3_unanswered_probes() -> None:
    m = new()
    member(m, A, T0, ann(B))
    for t in (1, 2):
        m.tick(T0 + t)
    m.tick(T0 + 2.99)
    assert m.is_admitted(A)
    out = m.tick(T0 + 3)
    assert out[0] == Probe(A)
    assert out[1:] == [
        BroadcastPeerDown(A),
        CloseConnection(A),
        PeersChanged(ChangeReason.DIED, A),
    ]
    assert m.is_dead(A)
    assert A not in m.peer_ids()


def test_any_traffic_is_proof_of_life() -> None:
    m = new()
    member(m, A)
    for t in range(1, 30):
        m.tick(T0 + t)
        m.heard_from(A, T0 + t + 0.5)
    assert m.is_admitted(A)


def test_slow_link_gets_a_longer_bound() -> None:
    m = new()
    member(m, A)
    m.probe_result(A, True, 2000, T0)  # srtt 2 s -> dead after 4*2+1 = 9 s
    out = run(m, T0 + 8.9, T0)
    assert not of_type(out, BroadcastPeerDown)
    out = run(m, T0 + 9.5, T0 + 8.9)
    assert of_type(out, BroadcastPeerDown) == [BroadcastPeerDown(A)]


def test_own_stall_does_not_kill_everyone() -> None:
    m = new()
    member(m, A)
    out = m.tick(T0 + 10)  # our loop was blocked for 10 s: one probe only
    assert out == [Probe(A)]
    m.probe_result(A, True, 1, T0 + 10.01)
    assert not of_type(run(m, T0 + 12, T0 + 10.01), PeersChanged)


def test_next_deadline_is_the_death_deadline_once_probes_went_out() -> None:
    m = new()
    member(m, A)
    m.tick(T0 + 1)
    m.tick(T0 + 2)
    m.heard_from(A, T0 + 2.5)
    m.tick(T0 + 3)
    m.tick(T0 + 4)
    assert m.next_deadline() == T0 + 5  # two probes unanswered: the next round comes first
    m.tick(T0 + 5)
    assert m.next_deadline() == T0 + 5.5  # three unanswered: 3 s after last heard
    assert m.tick(T0 + 5.5)[-1] == PeersChanged(ChangeReason.DIED, A)


# --------------------------------------------------------------------------------------------
# Connections


def test_second_connection_survives_the_first_closing() -> None:
    m = new()
    member(m, A)
    m.connection_up(A, False, T0)
    assert m.connection_lost(A, T0 + 1) == []
    assert m.is_connected(A)


def test_lost_connection_reconnects_then_gives_up_without_peer_down() -> None:
    m = new()
    member(m, A)
    out = m.connection_lost(A, T0 + 1)
    assert out == [Connect(addr(A), ConnectReason.RECONNECT, 10.0)]
    out = m.connect_failed(A, T0 + 1.5)
    assert out == [PeersChanged(ChangeReason.LOST, A)]
    assert not m.is_dead(A)


def test_reconnect_success_keeps_the_member() -> None:
    m = new()
    member(m, A)
    m.connection_lost(A, T0 + 1)
    assert m.connection_up(A, False, T0 + 1.2) == [SendGossip(A, discover=False)]
    assert not of_type(run(m, T0 + 30, T0 + 1.2, answering=(A,)), PeersChanged)
    assert m.is_admitted(A)
    assert m.is_connected(A)


def test_reconnect_that_hangs_is_abandoned_after_the_silence_bound() -> None:
    m = new()
    member(m, A)
    m.connection_lost(A, T0 + 1)
    out = run(m, T0 + 5, T0 + 1)
    assert changes(out) == [(ChangeReason.LOST, A)]


def test_lost_peer_without_address_is_removed() -> None:
    m = new()
    m.connection_up(A, True, T0)
    m.gossip_received(A, frame(A, me=ann(A, n_addrs=0)), T0)
    assert m.connection_lost(A, T0 + 1) == [PeersChanged(ChangeReason.LOST, A)]


# --------------------------------------------------------------------------------------------
# Dead set


def kill_a(m: Membership) -> None:
    member(m, A)
    run(m, T0 + 3, T0)
    assert m.is_dead(A)


def test_dead_peer_is_not_reinserted_by_hearsay_but_verified_by_a_dial() -> None:
    m = new()
    kill_a(m)
    member(m, B, T0 + 4)
    out = m.gossip_received(B, frame(B, ann(A)), T0 + 5)
    assert A not in m.peer_ids()
    assert out == [Connect(addr(A), ConnectReason.VERIFY, 10.0)]
    m.connect_failed(A, T0 + 6)
    assert m.gossip_received(B, frame(B, ann(A)), T0 + 20) == []  # rate-limited
    assert of_type(m.gossip_received(B, frame(B, ann(A)), T0 + 36), Connect)


def test_inbound_connection_clears_the_dead_flag_and_gets_our_view() -> None:
    m = new()
    kill_a(m)
    assert m.connection_up(A, True, T0 + 10) == [SendGossip(A, discover=False)]
    assert not m.is_dead(A)
    out = m.gossip_received(A, frame(A), T0 + 10)
    assert changes(out) == [(ChangeReason.JOINED, A)]


def test_gossip_from_a_dead_peer_admits_it_again() -> None:
    m = new()
    kill_a(m)
    m.gossip_received(A, frame(A), T0 + 10)
    assert m.is_admitted(A)
    assert not m.is_dead(A)


def test_join_clears_the_dead_flag() -> None:
    m = new()
    kill_a(m)
    assert m.join(addr(A), T0 + 10) == [Connect(addr(A), ConnectReason.JOIN, 15.0)]
    assert not m.is_dead(A)


def test_dead_entries_expire() -> None:
    m = new()
    kill_a(m)
    for t in range(60, 480, 60):
        m.tick(T0 + t)
    assert not m.is_dead(A)


# --------------------------------------------------------------------------------------------
# PeerLeaving and PeerDown


def test_peer_leaving_only_from_the_leaver() -> None:
    m = new()
    member(m, A)
    member(m, B)
    assert m.peer_leaving_received(B, PeerLeaving(A), T0) == []
    assert m.is_admitted(A)
    out = m.peer_leaving_received(A, PeerLeaving(A), T0)
    assert out == [BroadcastPeerDown(A), CloseConnection(A), PeersChanged(ChangeReason.LEFT, A)]
    assert m.is_dead(A)


def test_peer_down_about_a_connected_peer_needs_confirmation() -> None:
    m = new()
    member(m, A)
    member(m, B)
    out = m.peer_down_received(B, PeerDown(A), T0 + 1)
    assert out == [CheckReachable(A, 3.0)]
    assert m.is_admitted(A)
    m.probe_result(A, True, 2, T0 + 1.01)
    assert not of_type(run(m, T0 + 10, T0 + 1.01, answering=(A, B)), PeersChanged)
    assert m.is_admitted(A)


def test_peer_down_confirmed_unreachable_removes_without_rebroadcast() -> None:
    m = new()
    member(m, A)
    member(m, B)
    m.peer_down_received(B, PeerDown(A), T0 + 1)
    out = m.peer_unreachable_confirmed(A, T0 + 1.5)
    assert out == [CloseConnection(A), PeersChanged(ChangeReason.DOWN, A)]
    assert m.peer_unreachable_confirmed(A, T0 + 2) == []


def test_unconfirmed_peer_down_times_out_into_removal() -> None:
    m = new()
    member(m, A)
    member(m, B)
    m.tick(T0 + 0.5)
    m.peer_down_received(B, PeerDown(A), T0 + 0.6)
    m.heard_from(B, T0 + 3)
    out = m.tick(T0 + 3.6)
    assert (ChangeReason.DOWN, A) in changes(out)


def test_peer_down_about_an_unconnected_peer_removes_at_once() -> None:
    m = new()
    member(m, B, T0, ann(A))
    out = m.peer_down_received(B, PeerDown(A), T0 + 1)
    assert out == [PeersChanged(ChangeReason.DOWN, A)]
    assert m.is_dead(A)


def test_peer_down_ignored_about_us_itself_or_from_strangers() -> None:
    m = new()
    member(m, B, T0, ann(A))
    assert m.peer_down_received(B, PeerDown(ME), T0) == []
    assert m.peer_down_received(B, PeerDown(B), T0) == []
    assert m.peer_down_received(C, PeerDown(A), T0) == []  # C never gossiped: not admitted
    assert A in m.peer_ids()


# --------------------------------------------------------------------------------------------
# Heartbeat, strikes, prune, rejoin


def test_heartbeat_strikes_an_unreachable_transitive_peer_after_the_horizon() -> None:
    m = new()
    member(m, B, T0, ann(A))
    events: list[Action] = []
    for t in (60, 120, 180, 240):
        now = T0 + t
        m.heard_from(B, now - 0.5)
        out = m.tick(now)
        assert Connect(addr(A), ConnectReason.HEARTBEAT, 10.0) in out
        assert SendGossip(B) in out  # connected members are only synced
        events += m.connect_failed(A, now + 1)
        if t < 240:
            assert A in m.peer_ids()
    assert events == [BroadcastPeerDown(A), PeersChanged(ChangeReason.DIED, A)]


def test_heartbeat_dial_success_admits_the_peer() -> None:
    m = new()
    member(m, B, T0, ann(A))
    m.heard_from(B, T0 + 60)
    assert Connect(addr(A), ConnectReason.HEARTBEAT, 10.0) in m.tick(T0 + 60)
    assert m.connection_up(A, False, T0 + 60.1) == [SendGossip(A, discover=False)]
    assert changes(m.gossip_received(A, frame(A), T0 + 60.2)) == [(ChangeReason.JOINED, A)]
    assert m.is_admitted(A)
    m.heard_from(B, T0 + 80.5)
    m.heard_from(A, T0 + 80.5)
    m.tick(T0 + 81)  # the heartbeat's 20 s outcome deadline has passed: nothing happens
    assert m.is_admitted(A)


def test_heartbeat_takes_at_most_k_targets() -> None:
    m = new()
    others = [ann(bytes([i]) * 32) for i in range(10, 20)]
    member(m, A, T0, *others)
    targets = m.heartbeat_targets()
    assert len(targets) == 5
    assert len(set(targets)) == 5
    assert set(targets) <= set(m.peer_ids())


def test_peers_unseen_for_360s_are_pruned() -> None:
    m = new(timing=Timing(heartbeat_strikes=1000))
    member(m, B, T0, ann(A, n_addrs=0))
    out: list[Action] = []
    for t in range(60, 421, 60):
        m.heard_from(B, T0 + t)
        out += m.tick(T0 + t)
    assert changes(out) == [(ChangeReason.PRUNED, A)]
    assert not m.is_dead(A)


def test_rejoin_dials_unconnected_bootstrap_every_60s() -> None:
    m = new(bootstrap=[addr(A), addr(ME)])
    assert m.tick(T0 + 59) == []
    out = m.tick(T0 + 60)
    assert out == [Connect(addr(A), ConnectReason.REJOIN, 10.0)]
    assert m.connection_up(A, False, T0 + 61) == [SendGossip(A, discover=True)]
    m.gossip_received(A, frame(A), T0 + 61)
    m.heard_from(A, T0 + 119)
    assert not of_type(m.tick(T0 + 120), Connect)


def test_join_when_connected_gossips_with_discovery() -> None:
    m = new()
    member(m, A)
    assert m.join(addr(A), T0) == [SendGossip(A, discover=True)]
    assert m.join(addr(ME), T0) == []


# --------------------------------------------------------------------------------------------
# Discovery and self updates


def test_discovering_exchange_dials_unconnected_peers() -> None:
    m = new()
    out = m.join(addr(A), T0)
    assert out == [Connect(addr(A), ConnectReason.JOIN, 15.0)]
    assert m.connection_up(A, False, T0 + 1) == [SendGossip(A, discover=True)]
    out = m.gossip_received(A, frame(A, ann(B), ann(C), ann(D, n_addrs=0)), T0 + 1, discover=True)
    assert of_type(out, Connect) == [
        Connect(addr(B), ConnectReason.DISCOVER, 10.0),
        Connect(addr(C), ConnectReason.DISCOVER, 10.0),
    ]


def test_discovery_fanout_is_capped() -> None:
    m = new(timing=Timing(discover_fanout=1))
    m.connection_up(A, False, T0)
    out = m.gossip_received(A, frame(A, ann(B), ann(C)), T0, discover=True)
    assert len(of_type(out, Connect)) == 1


def test_plain_exchange_does_not_dial() -> None:
    m = new()
    assert not of_type(member(m, A, T0, ann(B)), Connect)


def test_self_update_is_gossiped_to_members() -> None:
    m = new()
    member(m, A)
    member(m, B)
    m.connection_up(C, True, T0)  # not admitted: not told
    out = m.update_self(ann(ME, role=NodeRole.HOST, hosted_models=("m",)), T0)
    assert out == [SendGossip(A, discover=True), SendGossip(B, discover=True)]
    assert m.update_self(ann(ME, role=NodeRole.HOST, hosted_models=("m",)), T0) == []


def test_self_update_must_carry_our_id() -> None:
    m = new()
    try:
        m.update_self(ann(A), T0)
    except ValueError:
        return
    raise AssertionError("accepted a foreign id")


# --------------------------------------------------------------------------------------------
# Routing queries


def test_hosts_for_model_worked_example() -> None:
    """own id = 30 zero bytes + 01 02: h = ((0*31+...)*31 + 1)*31 + 2 = 33; 3 hosts: 33 % 3 = 0,
    4 hosts: 33 % 4 = 1 (rotate left by one)."""
    me = bytes(30) + b"\x01\x02"
    m = Membership(me, now=T0)
    host = {"role": NodeRole.HOST, "hosted_models": ("m",), "hosted_models_known": True}
    h1, h2, h3 = (bytes([i]) * 32 for i in (9, 7, 8))
    m.connection_up(A, True, T0)
    m.gossip_received(
        A,
        frame(
            A,
            ann(h1, **host),
            ann(h2, **host),
            ann(h3, **host),
            ann(B, role=NodeRole.WORKER, serving_models=("m",)),
            ann(C, role=NodeRole.HOST, serving_models=("m",), hosted_models_known=False),
        ),
        T0,
    )
    # Candidates sorted: C(04..) h2(07..) h3(08..) h1(09..); 33 % 4 = 1.
    assert m.hosts_for_model("m") == [h2, h3, h1, C]
    assert m.hosts_for_model("other") == []
    # Seen from another node id (h = 0): no rotation.
    assert m.hosts_for_model("m", own_id=bytes(32)) == [C, h2, h3, h1]


def test_route_table_lists_self_and_every_routable_peer() -> None:
    m = new(mesh_id="mid")
    m.update_self(ann(ME, role=NodeRole.HOST, hosted_models=("a",)), T0)
    member(
        m,
        A,
        T0,
        ann(B, serving_models=("b",)),
        me=ann(A, hosted_models=("c",), hosted_models_known=True),
    )
    table = m.route_table()
    assert table.mesh_id == "mid"
    assert table.entries == (RouteEntry(ME, "a"), RouteEntry(A, "c"), RouteEntry(B, "b"))


def test_peers_view_reports_rtt_best_ever() -> None:
    m = new()
    member(m, A)
    m.probe_result(A, True, 40, T0 + 1)
    m.probe_result(A, True, 25.4, T0 + 2)
    m.probe_result(A, True, 90, T0 + 3)
    (view,) = m.peers_view(T0 + 4)
    assert view.rtt_ms == 25
    assert view.last_seen_age == 1.0


# --------------------------------------------------------------------------------------------
# Invariants under arbitrary input sequences

PEERS = [A, B, C, D]
events = st.lists(
    st.tuples(
        st.sampled_from(
            ["up_in", "up_out", "lost", "gossip", "probe", "heard", "down", "leave", "fail", "tick"]
        ),
        st.sampled_from(PEERS),
        st.sampled_from(PEERS),
        st.floats(0.0, 40.0),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_invariants_hold_for_any_event_sequence(seq: list[tuple[str, bytes, bytes, float]]) -> None:
    m = new(bootstrap=[addr(A)])
    now = T0
    for kind, p, q, dt in seq:
        now += dt
        match kind:
            case "up_in" | "up_out":
                m.connection_up(p, kind == "up_in", now)
            case "lost":
                m.connection_lost(p, now)
            case "gossip":
                m.gossip_received(p, frame(p, ann(q)), now, discover=True)
            case "probe":
                m.probe_result(p, True, dt * 10, now)
            case "heard":
                m.heard_from(p, now)
            case "down":
                m.peer_down_received(p, PeerDown(q), now)
            case "leave":
                m.peer_leaving_received(p, PeerLeaving(p), now)
            case "fail":
                m.connect_failed(p, now)
                m.gossip_failed(p, now)
            case _:
                m.tick(now)
                assert m.next_deadline() > now
        ids = m.peer_ids()
        assert ME not in ids
        assert not any(m.is_dead(x) for x in ids)
        assert all(x in ids for x in PEERS if m.is_admitted(x))
        assert m.gossip_frame(now).peers[-1].endpoint_id == ME
