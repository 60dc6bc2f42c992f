"""What this node tells the mesh about itself (pure).

:func:`self_announcement` turns the node's runners and facts into the gossip entry the membership
core spreads: a client is a CLIENT, a node with a ready model a HOST, any other a WORKER.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh_llm import __version__
from mesh_llm.protocol import EndpointAddrInfo, NodeRole, PeerAnnouncement, PeerId, ServedModel
from mesh_llm.runtime.view import RunnerView

__all__ = ["node_role", "self_announcement"]


def node_role(client: bool, runners: Sequence[RunnerView]) -> NodeRole:
    if client:
        return NodeRole.CLIENT
    return NodeRole.HOST if any(r.ready for r in runners) else NodeRole.WORKER


def self_announcement(
    *,
    endpoint_id: PeerId,
    addr: EndpointAddrInfo,
    client: bool,
    runners: Sequence[RunnerView],
    api_port: int,
    catalog_models: Sequence[str],
    capacity: int,
    is_soc: bool | None,
    llama_build: str | None,
    rpc_ready: bool,
    hostname: str | None = None,
    available_models: Sequence[tuple[str, int]] = (),
) -> PeerAnnouncement:
    """``runners``: the models this node serves, in order (embedding sidecars are not
    announced); ``api_port`` is announced only by a HOST."""
    role = node_role(client, runners)
    ready = [r for r in runners if r.ready]
    return PeerAnnouncement(
        endpoint_id=endpoint_id,
        role=role,
        http_port=api_port if role is NodeRole.HOST else None,
        version=__version__,
        addr=addr,
        serving_models=tuple(r.name for r in runners),
        hosted_models=tuple(r.name for r in ready),
        hosted_models_known=True,
        catalog_models=tuple(catalog_models),
        primary_serving=runners[0].name if runners else None,
        served_models=tuple(ServedModel(r.name, r.identity, r.ctx_size, r.ready) for r in runners),
        vram_bytes=capacity,
        is_soc=is_soc,
        llama_build=llama_build,
        rpc_ready=rpc_ready,
        hostname=hostname,
        available_models=tuple(sorted(available_models)),
    )
