"""mesh package: membership as a pure state machine (docs/DESIGN.md, "Membership rules").

:class:`Membership` takes events with ``now`` and returns actions; the asyncio service that
performs them over iroh lives beside it. Host choice and the route table are pure functions.
"""

from mesh_llm.mesh.actions import (
    Action,
    BroadcastPeerDown,
    ChangeReason,
    CheckReachable,
    CloseConnection,
    Connect,
    ConnectReason,
    MeshIdAdopted,
    PeersChanged,
    PeerView,
    Probe,
    SendGossip,
)
from mesh_llm.mesh.demand import DemandTable, ModelDemand
from mesh_llm.mesh.hosts import host_rotation_hash, hosts_for_model, routable_models, route_table
from mesh_llm.mesh.join import JoinState, JoinStatus, join_status
from mesh_llm.mesh.membership import Membership
from mesh_llm.mesh.peers import PeerInfo
from mesh_llm.mesh.service import MeshService
from mesh_llm.mesh.timing import Timing

__all__: list[str] = [
    "Action",
    "BroadcastPeerDown",
    "ChangeReason",
    "CheckReachable",
    "CloseConnection",
    "Connect",
    "ConnectReason",
    "DemandTable",
    "JoinState",
    "JoinStatus",
    "Membership",
    "MeshIdAdopted",
    "MeshService",
    "ModelDemand",
    "PeerInfo",
    "PeerView",
    "PeersChanged",
    "Probe",
    "SendGossip",
    "Timing",
    "host_rotation_hash",
    "hosts_for_model",
    "join_status",
    "routable_models",
    "route_table",
]
