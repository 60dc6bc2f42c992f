"""Wires a node into the mesh: identity, transport, membership core and its service.

Owns the decisions that need the node's configuration (which key, which mesh id, which tokens)
and turns the membership view into routing targets and status rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mesh_llm.errors import ConfigError, PortInUseError, ProtocolError
from mesh_llm.mesh import JoinStatus, Membership, MeshService, SendGossip, Timing
from mesh_llm.network import (
    DEFAULT_RELAY_URLS,
    BiStream,
    PeerTraffic,
    Target,
    Transport,
    generate_key,
    load_or_create_key,
)
from mesh_llm.protocol import (
    EndpointAddrInfo,
    Invite,
    NodeRole,
    PeerAnnouncement,
    PeerId,
    decode_invite,
    encode_token,
    mesh_key_from_secret,
    named_mesh_id,
    random_mesh_id,
)
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.split_group import PeerSnapshot
from mesh_llm.runtime.view import PeerRow

__all__ = ["MeshLink", "decode_join_tokens", "mesh_key_for", "port_record", "remembered_port"]

log = logging.getLogger(__name__)


def decode_join_tokens(tokens: tuple[str, ...]) -> list[EndpointAddrInfo]:
    return [_decode(token).addr for token in tokens]


def _decode(token: str) -> Invite:
    try:
        return decode_invite(token)
    except ProtocolError as exc:
        raise ConfigError(f"invalid --join token {token[:12]}...: {exc}") from exc


def mesh_key_for(secret: str | None, tokens: tuple[str, ...]) -> bytes | None:
    """The private mesh's key: from ``--mesh-secret``, else from the invite tokens; None for an
    open mesh. Tokens that disagree with each other or with the secret are a ConfigError."""
    keys = {invite.mesh_key for invite in map(_decode, tokens) if invite.mesh_key is not None}
    if secret is not None:
        try:
            key = mesh_key_from_secret(secret)
        except ProtocolError as exc:
            raise ConfigError(f"--mesh-secret: {exc}") from exc
        if keys - {key}:
            raise ConfigError("an invite token carries a different mesh secret than --mesh-secret")
        return key
    if len(keys) > 1:
        raise ConfigError("the invite tokens carry different mesh secrets")
    return keys.pop() if keys else None


def _mesh_id_for(config: NodeConfig, state: Path) -> str | None:
    """Originators pick the mesh id; joiners adopt the first one gossiped to them (an ``--auto``
    node is a joiner until it starts a mesh: :meth:`MeshLink.originate_mesh`)."""
    if config.mesh_name:
        return named_mesh_id(config.mesh_name)
    if config.join or config.auto:
        return None
    return _own_mesh_id(state)


def _own_mesh_id(state: Path) -> str:
    path = state / "mesh-id"
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if len(existing) == 32:
            return existing
    mesh_id = random_mesh_id()
    with contextlib.suppress(OSError):
        path.write_text(mesh_id + "\n")
    return mesh_id


QUIC_PORT_FILE = "quic-port"
"""``<identity tag> <port>``: the UDP port this identity bound last, reused so that a restarted
node keeps its address and therefore its invite token."""


def _identity_tag(key: bytes) -> str:
    """A tag naming the node identity of ``key`` (a one-way hash: the key is not derivable)."""
    return hashlib.sha256(b"mesh-llm quic-port\0" + key).hexdigest()[:16]


def remembered_port(record: str | None, key: bytes) -> int | None:
    """The port to try first: the one recorded for this identity, if any (pure)."""
    if not record:
        return None
    fields = record.split()
    if len(fields) != 2 or fields[0] != _identity_tag(key) or not fields[1].isdigit():
        return None
    port = int(fields[1])
    return port if 0 < port <= 0xFFFF else None


def port_record(key: bytes, bound_sockets: list[str]) -> str | None:
    """What to remember after binding: the first bound socket's port for this identity."""
    for sock in bound_sockets:
        _, _, port = sock.rpartition(":")
        if port.isdigit() and 0 < int(port) <= 0xFFFF:
            return f"{_identity_tag(key)} {int(port)}\n"
    return None


class MeshLink:
    """The node's mesh membership, started by :meth:`start` and run by :meth:`run`."""

    def __init__(
        self,
        config: NodeConfig,
        state: Path,
        *,
        serve_http: Callable[[BiStream, PeerTraffic], Coroutine[Any, Any, None]] | None,
        on_change: Callable[[], None],
        timing: Timing | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self._serve_http = serve_http
        self._on_change = on_change
        self.timing = timing or Timing()
        self.bootstrap = decode_join_tokens(config.join)
        self.mesh_key = mesh_key_for(config.mesh_secret, config.join)
        """Private mesh: the key every member proves it knows (None: open mesh)."""
        self.transport: Transport | None = None
        self.service: MeshService | None = None
        self.membership: Membership | None = None
        self.token: str | None = None
        self._closed = False
        self._demand_push: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Bind the QUIC endpoint (never waits on the internet) and build the core."""
        ephemeral = self.config.client or self.config.ephemeral_key
        key = generate_key() if ephemeral else load_or_create_key(self.state / "key")
        relays = list(self.config.relays) or None
        port_file = self.state / QUIC_PORT_FILE
        reuse: int | None = None
        if self.config.bind_port is None and not ephemeral:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                reuse = remembered_port(port_file.read_text(encoding="utf-8"), key)
        port = self.config.bind_port if self.config.bind_port is not None else reuse
        try:
            self.transport = await Transport.bind(
                key,
                relay_urls=relays,
                no_relay=self.config.no_relay,
                bind_ip=self.config.bind_ip,
                bind_port=port,
                patch_bindings=self.config.iroh_fast,
            )
        except PortInUseError:
            if reuse is None:
                raise
            log.warning(
                "UDP port %d (this node's last) is taken: binding another, so the invite token "
                "changes (pin one with --bind-port)",
                reuse,
            )
            self.transport = await Transport.bind(
                key,
                relay_urls=relays,
                no_relay=self.config.no_relay,
                bind_ip=self.config.bind_ip,
                bind_port=None,
                patch_bindings=self.config.iroh_fast,
            )
        if not ephemeral:
            record = port_record(key, self.transport.bound_sockets())
            if record is not None:
                with contextlib.suppress(OSError):
                    port_file.write_text(record, encoding="utf-8")
        now = time.monotonic()
        self.membership = Membership(
            self.transport.node_id_bytes,
            now=now,
            timing=self.timing,
            mesh_id=_mesh_id_for(self.config, self.state),
            bootstrap=self.bootstrap,
            wall_offset=time.time() - now,
            relay_urls=() if self.config.no_relay else (relays or DEFAULT_RELAY_URLS),
        )
        self.service = MeshService(
            self.transport,
            self.membership,
            serve_http=self._serve_http,
            on_change=self._on_change,
            on_mesh_id=self._save_mesh_id,
            mesh_key=self.mesh_key,
        )
        self.token = encode_token(self.transport.addr(), self.mesh_key)

    def originate_mesh(self) -> None:
        """``--auto`` starts a mesh: give it this node's mesh id (unless one was adopted)."""
        if self.membership is not None:
            self.membership.originate_mesh_id(_own_mesh_id(self.state))
            self._on_change()

    def _save_mesh_id(self, mesh_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.state / "last-mesh").write_text(mesh_id + "\n")
        self._on_change()

    @property
    def node_id(self) -> str | None:
        return self.transport.node_id if self.transport else None

    async def run(self) -> None:
        assert self.service is not None
        for addr in self.bootstrap:
            self.service.join(addr)
        await self.service.run()

    async def leave_and_close(self) -> None:
        """Announce leaving, then close the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._demand_push is not None:
            self._demand_push.cancel()
        if self.service is not None:
            await self.service.leave()
            await self.service.close()
        if self.transport is not None:
            await self.transport.close()

    def announce(self, announcement: PeerAnnouncement) -> None:
        """Publish what this node serves (gossiped at once to every connected member)."""
        if self.membership is None or self.service is None:
            return
        self.service.apply(self.membership.update_self(announcement, time.monotonic()))

    def refresh_after_failure(self, failed: PeerId | None) -> None:
        """A routing target failed: gossip with one peer in the background so the view catches
        up (docs/DESIGN.md, "Routing pipeline", step 4) — the failed peer itself when we still
        hold a connection to it (its gossip tells whether it still hosts), otherwise any
        connected member."""
        membership, service = self.membership, self.service
        if membership is None or service is None:
            return
        candidates = [p for p in membership.peer_ids() if service.is_connected(p)]
        peer = failed if failed in candidates else (candidates[0] if candidates else None)
        if peer is not None:
            service.apply([SendGossip(peer, discover=False)])

    def record_request(self, model: str) -> None:
        """Count a request in the demand map; push the map to connected peers within
        ``demand_push`` seconds (heartbeats alone would take a minute, and a standby node
        promotes on it)."""
        if self.membership is None:
            return
        self.membership.record_request(model, time.monotonic())
        if self._demand_push is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._demand_push = loop.call_later(self.timing.demand_push, self._push_demand)

    def _push_demand(self) -> None:
        self._demand_push = None
        membership, service = self.membership, self.service
        if membership is None or service is None or self._closed:
            return
        service.apply(
            [
                SendGossip(peer, discover=False)
                for peer in membership.peer_ids()
                if service.is_connected(peer)
            ]
        )

    # ------------------------------------------------------------------------------ views

    def remote_targets(self) -> dict[str, list[Target]]:
        """Models served by connected, admitted HOST peers, in this node's host order
        (docs/DESIGN.md, "Host order and route tables")."""
        membership = self.membership
        service = self.service
        if membership is None or service is None:
            return {}
        models: dict[str, None] = {}
        for peer in membership.peer_ids():
            ann = membership.announcement(peer)
            if ann is None or ann.role is not NodeRole.HOST:
                continue
            for model in ann.hosted_models if ann.hosted_models_known else ann.serving_models:
                models[model] = None
        targets: dict[str, list[Target]] = {}
        for model in models:
            for peer in membership.hosts_for_model(model, membership.own_id):
                if not (membership.is_admitted(peer) and service.is_connected(peer)):
                    continue
                ann = membership.announcement(peer)
                ctx = None
                if ann is not None:
                    ctx = next(
                        (s.context_length for s in ann.served_models if s.name == model), None
                    )
                targets.setdefault(model, []).append(
                    Target(model, f"peer:{peer.hex()}", None, peer, ctx)
                )
        return targets

    def join_status(self) -> JoinStatus | None:
        """How joining through the ``--join`` tokens goes; None without any."""
        return self.membership.join_status() if self.membership is not None else None

    def peer_snapshots(self) -> tuple[PeerSnapshot, ...]:
        """Every peer with an announcement, frozen, for split planning."""
        membership, service = self.membership, self.service
        if membership is None or service is None:
            return ()
        rtts = {v.peer_id: v.rtt_ms for v in membership.peers_view(time.monotonic())}
        snapshots: list[PeerSnapshot] = []
        for peer in membership.peer_ids():
            ann = membership.announcement(peer)
            if ann is None:
                continue
            rtt = rtts.get(peer)
            snapshots.append(
                PeerSnapshot(
                    peer,
                    ann,
                    float(rtt) if rtt is not None else None,
                    admitted=membership.is_admitted(peer),
                    connected=service.is_connected(peer),
                )
            )
        return tuple(snapshots)

    def peer_rows(self) -> tuple[PeerRow, ...]:
        """Every known peer as ``/api/status`` lists it."""
        membership, service = self.membership, self.service
        if membership is None or service is None:
            return ()
        rows: list[PeerRow] = []
        for view in membership.peers_view(time.monotonic()):
            traffic = service.traffic.get(view.peer_id)
            sent, received = (traffic.sent, traffic.received) if traffic else (0, 0)
            rows.append(PeerRow(view, sent, received))
        return tuple(rows)
