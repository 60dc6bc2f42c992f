"""MeshLink's reaction to a failed routing target: one background gossip, to the right peer."""

from __future__ import annotations

from pathlib import Path

from mesh_llm.mesh import Action, Membership, SendGossip
from mesh_llm.protocol import GossipFrame, NodeRole, PeerAnnouncement, PeerId
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.mesh_link import MeshLink

OWN, A, B = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32


class FakeService:
    def __init__(self, connected: set[bytes]) -> None:
        self.connected = connected
        self.applied: list[Action] = []

    def is_connected(self, peer: bytes) -> bool:
        return peer in self.connected

    def apply(self, actions: list[Action]) -> None:
        self.applied += actions


def link_with(connected: set[bytes], tmp_path: Path) -> tuple[MeshLink, FakeService]:
    link = MeshLink(NodeConfig(), tmp_path, serve_http=None, on_change=lambda: None)
    core = Membership(OWN, now=0.0)
    for peer in (A, B):
        core.connection_up(peer, True, 0.0)
        frame = GossipFrame(peer, (PeerAnnouncement(peer, NodeRole.HOST, http_port=1),))
        core.gossip_received(peer, frame, 0.0)
    service = FakeService(connected)
    link.membership = core
    link.service = service  # type: ignore[assignment]
    return link, service


def test_gossips_with_the_failed_peer_when_still_connected(tmp_path: Path) -> None:
    link, service = link_with({A, B}, tmp_path)
    link.refresh_after_failure(PeerId(B))
    assert service.applied == [SendGossip(B, discover=False)]


def test_falls_back_to_another_connected_member(tmp_path: Path) -> None:
    link, service = link_with({A}, tmp_path)
    link.refresh_after_failure(PeerId(B))
    assert service.applied == [SendGossip(A, discover=False)]


def test_nothing_to_do_without_connections(tmp_path: Path) -> None:
    link, service = link_with(set(), tmp_path)
    link.refresh_after_failure(None)
    assert service.applied == []


def test_mesh_key_from_the_secret_or_the_tokens() -> None:
    import pytest

    from mesh_llm.errors import ConfigError
    from mesh_llm.protocol import EndpointAddrInfo, encode_token, mesh_key_from_secret
    from mesh_llm.runtime.mesh_link import mesh_key_for

    addr = EndpointAddrInfo.create(A.hex(), ip_addrs=["10.0.0.1:4"])
    key = mesh_key_from_secret("the mesh secret")
    plain, private = encode_token(addr), encode_token(addr, key)
    assert mesh_key_for(None, ()) is None
    assert mesh_key_for(None, (plain,)) is None
    assert mesh_key_for(None, (plain, private)) == key
    assert mesh_key_for("the mesh secret", (plain,)) == key
    assert mesh_key_for("the mesh secret", (private,)) == key
    with pytest.raises(ConfigError, match="different mesh secret than --mesh-secret"):
        mesh_key_for("another secret", (private,))
    with pytest.raises(ConfigError, match="different mesh secrets"):
        mesh_key_for(None, (private, encode_token(addr, bytes(32))))
    with pytest.raises(ConfigError, match="--mesh-secret"):
        mesh_key_for("short", ())
