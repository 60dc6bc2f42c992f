"""How joining the mesh through the ``--join`` addresses is going (pure).

The membership core records each dial of a bootstrap address, each failure with its reason, and
each admission; :func:`join_status` turns those facts into one state that ``/api/status`` shows,
the client's 503 explains and the warnings name:

- ``joining``: the first dial is under way, nothing has failed yet;
- ``joined``: a member of the mesh is connected and admitted;
- ``failed``: no member, no dial under way, with the last failure's reason;
- ``retrying``: a dial is under way again after a failure (or after the mesh was lost).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import assert_never

from mesh_llm.protocol.token import EndpointAddrInfo, PeerId

__all__ = ["JoinFailure", "JoinState", "JoinStatus", "join_status", "redial_address"]


class JoinState(enum.StrEnum):
    JOINING = "joining"
    JOINED = "joined"
    FAILED = "failed"
    RETRYING = "retrying"


@dataclass(frozen=True, slots=True)
class JoinFailure:
    """The last thing that went wrong with a bootstrap peer."""

    peer_id: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class JoinStatus:
    state: JoinState
    peer_id: PeerId
    """The bootstrap peer concerned (for ``joined``: the one connected, else any member)."""
    reason: str | None
    """Why the last attempt failed (``failed``, ``retrying``); None otherwise."""
    attempts: int
    """Dials of the bootstrap addresses so far."""

    @property
    def short_id(self) -> str:
        return self.peer_id[:5].hex()

    def describe(self) -> str:
        """One phrase for people: what the node is doing about the mesh."""
        match self.state:
            case JoinState.JOINED:
                return f"joined through {self.short_id}"
            case JoinState.JOINING:
                return f"still joining through {self.short_id} (no answer yet)"
            case JoinState.RETRYING:
                last = f" (last attempt: {self.reason})" if self.reason else ""
                return f"retrying {self.short_id}{last}"
            case JoinState.FAILED if self.reason and self.reason.startswith("refused"):
                return f"{self.short_id} {self.reason}"
            case JoinState.FAILED:
                return f"could not reach {self.short_id}: {self.reason}"
            case _:
                assert_never(self.state)


def join_status(
    bootstrap: Sequence[PeerId],
    *,
    members: Sequence[PeerId],
    pending: Collection[PeerId],
    failure: JoinFailure | None,
    joined_once: bool,
    attempts: int,
) -> JoinStatus | None:
    """The join state, or None when the node was given no bootstrap address.

    ``members``: connected, admitted peers; ``pending``: peers being dialled or connected but
    not admitted yet; ``failure``: the last failure (None: nothing failed since start)."""
    if not bootstrap:
        return None
    if members:
        peer = next((p for p in bootstrap if p in members), members[0])
        return JoinStatus(JoinState.JOINED, peer, None, attempts)
    in_progress = [p for p in bootstrap if p in pending]
    reason = failure.reason if failure is not None else None
    if in_progress:
        again = failure is not None or joined_once
        state = JoinState.RETRYING if again else JoinState.JOINING
        return JoinStatus(state, in_progress[0], reason if again else None, attempts)
    if failure is None:
        return JoinStatus(JoinState.JOINING, bootstrap[0], None, attempts)  # not dialled yet
    return JoinStatus(JoinState.FAILED, failure.peer_id, failure.reason, attempts)


def redial_address(
    token: EndpointAddrInfo,
    *,
    failures: int,
    relays: Sequence[str],
    learned: EndpointAddrInfo | None = None,
) -> EndpointAddrInfo | None:
    """The address to dial a bootstrap peer at after ``failures`` failed dials of it, or None
    to dial the token's address as it is.

    A token's direct addresses go stale (the host moved, or restarted on another port before it
    kept its port). The peer's *id* still names it: iroh reaches an id through a relay it is
    connected to. So after a failure the same id is dialled with one relay in turn (the token's
    other relays, this node's relay map: ``relays``, empty under ``--no-relay``, the relays gossip
    named for it, and last the one the failed dial used; a dial names one relay) and every IP
    address known for it: the token's and those the mesh's gossip taught us
    (``learned``). None when that adds nothing to the token's address (no failure yet, or no
    relay and nothing learned)."""
    if failures <= 0:
        return None
    ips = list(token.ip_addrs)
    known = [*token.relay_urls, *relays]
    if learned is not None and learned.id_hex == token.id_hex:
        known += learned.relay_urls
        ips += [ip for ip in learned.ip_addrs if ip not in ips]
    # The relay the failed dial used (the transport dials the first one) comes last in turn.
    tried = token.relay_urls[:1]
    candidates = [r for r in dict.fromkeys(known) if r not in tried] + list(tried)
    relay = [candidates[(failures - 1) % len(candidates)]] if candidates else []
    redial = EndpointAddrInfo.create(token.id_hex, relay, ips)
    if set(redial.relay_urls) <= set(token.relay_urls) and set(redial.ip_addrs) <= set(
        token.ip_addrs
    ):
        return None
    return redial
