"""The join state: joining -> failed (with the reason) -> retrying -> joined, and the warnings."""

from __future__ import annotations

import logging
import random

import pytest

from mesh_llm.mesh import Connect, ConnectReason, JoinState, JoinStatus, Membership, join_status
from mesh_llm.mesh.join import JoinFailure
from mesh_llm.protocol.frames import GossipFrame, PeerAnnouncement
from mesh_llm.protocol.token import EndpointAddrInfo

T0 = 1000.0
ME = bytes([1]) * 32
A, B = bytes([2]) * 32, bytes([3]) * 32


def addr(pid: bytes) -> EndpointAddrInfo:
    return EndpointAddrInfo.create(pid.hex(), ip_addrs=["10.0.0.1:7000"])


def joiner(*peers: bytes) -> Membership:
    return Membership(ME, now=T0, rng=random.Random(0), bootstrap=[addr(p) for p in peers or (A,)])


def admit(m: Membership, pid: bytes, now: float) -> None:
    m.connection_up(pid, False, now)
    m.gossip_received(pid, GossipFrame(pid, (PeerAnnouncement(pid, addr=addr(pid)),)), now)


def state(m: Membership) -> JoinStatus:
    status = m.join_status()
    assert status is not None
    return status


# ------------------------------------------------------------------------------ pure derivation


def test_no_bootstrap_no_join_state() -> None:
    assert Membership(ME, now=T0).join_status() is None
    assert (
        join_status((), members=(), pending=(), failure=None, joined_once=False, attempts=0) is None
    )


def test_a_member_means_joined_even_through_another_peer() -> None:
    status = join_status(
        (A,), members=(B,), pending=(A,), failure=JoinFailure(A, "x"), joined_once=True, attempts=3
    )
    assert status == JoinStatus(JoinState.JOINED, B, None, 3)


def test_first_dial_is_joining_a_later_one_retrying() -> None:
    first = join_status((A,), members=(), pending={A}, failure=None, joined_once=False, attempts=1)
    assert first == JoinStatus(JoinState.JOINING, A, None, 1)
    again = join_status(
        (A,), members=(), pending={A}, failure=JoinFailure(A, "boom"), joined_once=False, attempts=2
    )
    assert again == JoinStatus(JoinState.RETRYING, A, "boom", 2)


def test_describe_names_the_peer_and_the_reason() -> None:
    failed = JoinStatus(JoinState.FAILED, A, "no answer within 15 s", 1)
    assert failed.describe() == "could not reach 0202020202: no answer within 15 s"
    assert JoinStatus(JoinState.JOINING, A, None, 1).describe().startswith("still joining")
    assert "last attempt: boom" in JoinStatus(JoinState.RETRYING, A, "boom", 2).describe()
    assert JoinStatus(JoinState.JOINED, A, None, 1).describe() == "joined through 0202020202"


# --------------------------------------------------------------------------- through the core


def test_unanswered_join_fails_with_the_timeout_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    m = joiner()
    assert state(m).state is JoinState.JOINING
    actions = m.join(addr(A), T0)
    assert actions == [Connect(addr(A), ConnectReason.JOIN, m.timing.join_connect_timeout)]
    assert state(m) == JoinStatus(JoinState.JOINING, A, None, 1)
    with caplog.at_level(logging.INFO, logger="mesh_llm.mesh.membership"):
        m.tick(T0 + m.timing.join_connect_timeout)
    assert state(m) == JoinStatus(JoinState.FAILED, A, "no answer within 15 s", 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "not connected to any mesh" in text
    assert "0202020202 (the --join token's node): no answer within 15 s" in text


def test_transport_reason_is_kept_and_the_retry_is_shown() -> None:
    m = joiner()
    m.join(addr(A), T0)
    m.connect_failed(A, T0 + 1, "connect to 0202020202 failed: connection refused")
    failed = state(m)
    assert failed.state is JoinState.FAILED
    assert failed.reason == "connect to 0202020202 failed: connection refused"
    later = T0 + m.timing.rejoin_interval
    assert any(isinstance(a, Connect) for a in m.tick(later))
    assert state(m) == JoinStatus(JoinState.RETRYING, A, failed.reason, 2)


def test_repeated_identical_failure_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    m = joiner()
    m.join(addr(A), T0)
    with caplog.at_level(logging.INFO, logger="mesh_llm.mesh.membership"):
        m.connect_failed(A, T0 + 1, "refused")
        m.tick(T0 + m.timing.rejoin_interval)
        m.connect_failed(A, T0 + m.timing.rejoin_interval + 1, "refused")
    assert [r.levelno for r in caplog.records if "refused" in r.getMessage()] == [
        logging.WARNING,
        logging.INFO,
    ]


def test_admission_joins_and_losing_the_last_member_fails(caplog: pytest.LogCaptureFixture) -> None:
    m = joiner()
    m.join(addr(A), T0)
    admit(m, A, T0 + 1)
    assert state(m) == JoinStatus(JoinState.JOINED, A, None, 1)
    with caplog.at_level(logging.WARNING, logger="mesh_llm.mesh.membership"):
        m.connection_lost(A, T0 + 2)
    # The core re-dials the member at once: retrying, with why the mesh was lost.
    assert state(m) == JoinStatus(JoinState.RETRYING, A, "the connection was lost", 2)
    assert "the connection was lost" in caplog.text
    admit(m, A, T0 + 3)
    assert state(m).state is JoinState.JOINED


def test_connected_but_gossip_failed_is_a_failure() -> None:
    m = joiner()
    m.join(addr(A), T0)
    m.connection_up(A, False, T0 + 1)
    assert state(m).state is JoinState.JOINING  # connected, not admitted yet
    m.gossip_failed(A, T0 + 2, "timed out")
    status = state(m)
    assert status.state is JoinState.RETRYING  # the connection is still up
    assert status.reason == "connected, but the gossip exchange failed: timed out"


def test_a_token_without_addresses_fails_at_once() -> None:
    m = Membership(ME, now=T0, bootstrap=[EndpointAddrInfo.create(A.hex())])
    assert m.join(EndpointAddrInfo.create(A.hex()), T0) == []
    status = state(m)
    assert status.state is JoinState.FAILED
    assert status.reason is not None
    assert "no relay and no IP address" in status.reason


def test_a_second_bootstrap_peer_joined_is_enough() -> None:
    m = joiner(A, B)
    m.join(addr(A), T0)
    m.join(addr(B), T0)
    m.connect_failed(A, T0 + 1, "refused")
    admit(m, B, T0 + 1)
    assert state(m) == JoinStatus(JoinState.JOINED, B, None, 2)


def test_losing_the_mesh_redials_the_bootstrap_fast_then_backs_off() -> None:
    """A partition: the only member goes silent and is declared dead. The bootstrap is re-dialled
    after 1 s, then 2, 4, 8, 15, 15 ... s while out of any mesh (the detection bound's cap), and the
    fast pace ends once the node is back in a mesh."""
    m = joiner()
    m.join(addr(A), T0)
    admit(m, A, T0)
    now, dials = T0, []
    while now < T0 + 200:
        now = max(now + 0.001, m.next_deadline())
        for action in m.tick(now):
            if isinstance(action, Connect):
                assert action.reason is ConnectReason.REJOIN
                dials.append(round(now - T0, 1))
                m.connect_failed(A, now, "no answer")
    assert not m.is_admitted(A)  # silent: declared dead after 3 s
    dead_at = 3.0
    gaps = [round(b - a, 1) for a, b in zip([dead_at, *dials], dials, strict=False)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert set(gaps[4:]) == {15.0}
    # Healed: the next dial connects; back in the mesh, re-dials go back to every 60 s.
    admit(m, A, now)
    assert state(m).state is JoinState.JOINED
    assert not [a for a in m.tick(now + 59) if isinstance(a, Connect)]
    # Lost again later: the fast pace starts over at 1 s, not where it stopped.
    m.connection_lost(A, now + 60)
    m.connect_failed(A, now + 60, "refused")  # the immediate reconnect fails
    assert [a for a in m.tick(now + 61) if isinstance(a, Connect)]


def test_a_node_that_never_joined_keeps_the_60s_pace() -> None:
    m = joiner()
    m.join(addr(A), T0)
    m.connect_failed(A, T0 + 1, "refused")
    assert not [a for a in m.tick(T0 + 30) if isinstance(a, Connect)]
    assert [a for a in m.tick(T0 + 60) if isinstance(a, Connect)]
