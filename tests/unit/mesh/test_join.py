"""The join state: joining -> failed (with the reason) -> retrying -> joined, and the warnings."""

from __future__ import annotations

import logging
import random

import pytest

from mesh_llm.mesh import Connect, ConnectReason, JoinState, JoinStatus, Membership, join_status
from mesh_llm.mesh.join import JoinFailure, redial_address
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


def test_a_refusal_while_dialling_fails_the_join_with_its_reason() -> None:
    m = joiner()
    m.join(addr(A), T0)  # a private dialler: the dial stays pending during the handshake
    m.admission_refused(A, T0 + 1, "refused: wrong mesh secret")
    status = state(m)
    assert status.state is JoinState.FAILED
    assert status.reason == "refused: wrong mesh secret"
    assert status.describe() == f"{A[:5].hex()} refused: wrong mesh secret"


def test_a_refused_gossip_fails_the_join_after_the_connection_is_gone() -> None:
    m = joiner()
    m.join(addr(A), T0)
    m.connection_up(A, False, T0 + 1)  # an open-mesh node: connected, then its gossip refused
    m.admission_refused(A, T0 + 2, "refused: this mesh requires a mesh secret")
    m.connection_lost(A, T0 + 2)
    status = state(m)
    assert status.state is JoinState.FAILED
    assert status.reason == "refused: this mesh requires a mesh secret"
    assert m.peer_ids() == []


# ------------------------------------------------- a stale token address: redial by id (item 2)

RELAY_1 = "https://relay-one.example./"
RELAY_2 = "https://relay-two.example./"


def test_no_redial_before_a_failure_or_without_anything_new() -> None:
    token = addr(A)
    assert redial_address(token, failures=0, relays=[RELAY_1]) is None
    assert redial_address(token, failures=3, relays=[]) is None  # --no-relay, nothing learned
    own = EndpointAddrInfo.create(A.hex(), [RELAY_1], ["10.0.0.1:7000"])
    assert redial_address(own, failures=1, relays=[RELAY_1]) is None  # that relay was tried


def test_redial_goes_by_id_through_each_relay_in_turn() -> None:
    token = addr(A)
    got = [redial_address(token, failures=n, relays=[RELAY_1, RELAY_2]) for n in (1, 2, 3)]
    assert [g.relay_urls if g else None for g in got] == [(RELAY_1,), (RELAY_2,), (RELAY_1,)]
    for g in got:
        assert g is not None
        assert (g.id_hex, g.ip_addrs) == (token.id_hex, token.ip_addrs)


def test_the_tokens_own_relay_comes_last_and_gossip_adds_addresses() -> None:
    token = EndpointAddrInfo.create(A.hex(), [RELAY_2], ["10.0.0.1:7000"])
    learned = EndpointAddrInfo.create(A.hex(), [], ["10.0.0.9:7100"])
    first = redial_address(token, failures=1, relays=[RELAY_1, RELAY_2], learned=learned)
    assert first == EndpointAddrInfo.create(A.hex(), [RELAY_1], ["10.0.0.1:7000", "10.0.0.9:7100"])
    second = redial_address(token, failures=2, relays=[RELAY_1, RELAY_2], learned=learned)
    assert second is not None
    assert second.relay_urls == (RELAY_2,)
    other = EndpointAddrInfo.create(B.hex(), [], ["10.9.9.9:1"])  # another node's: ignored
    assert redial_address(token, failures=1, relays=[], learned=other) is None


def test_a_failed_join_is_redialled_at_once_by_id_through_our_relay() -> None:
    m = Membership(ME, now=T0, bootstrap=[addr(A)], relay_urls=[RELAY_1])
    m.join(addr(A), T0)
    actions = m.connect_failed(A, T0 + 1, "connect to 0202020202 timed out")
    by_id = EndpointAddrInfo.create(A.hex(), [RELAY_1], ["10.0.0.1:7000"])
    assert actions == [Connect(by_id, ConnectReason.REJOIN, m.timing.connect_timeout)]
    assert state(m).state is JoinState.RETRYING
    assert state(m).reason == "connect to 0202020202 timed out"
    # That failed too: the next rejoin dials by id again (not the stale token address).
    assert m.connect_failed(A, T0 + 2, "still nothing") == []
    assert state(m).state is JoinState.FAILED
    later = [a for a in m.tick(T0 + m.timing.rejoin_interval) if isinstance(a, Connect)]
    assert [a.addr for a in later] == [by_id]
    admit(m, A, T0 + m.timing.rejoin_interval + 1)
    assert state(m).state is JoinState.JOINED


def test_without_relays_the_token_address_is_all_there_is() -> None:
    m = joiner()
    m.join(addr(A), T0)
    assert m.connect_failed(A, T0 + 1, "refused") == []
    later = [a for a in m.tick(T0 + m.timing.rejoin_interval) if isinstance(a, Connect)]
    assert [a.addr for a in later] == [addr(A)]


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
