"""Split-member selection: who is in a model's election group, who may help."""

from __future__ import annotations

from mesh_llm.inference import Member
from mesh_llm.protocol import NodeRole, PeerAnnouncement
from mesh_llm.runtime.split_group import PeerSnapshot, SplitGroup, split_group

A, B, C, D = (bytes([i]) * 32 for i in (2, 3, 4, 5))


def peer(
    pid: bytes,
    *models: str,
    role: NodeRole = NodeRole.WORKER,
    rtt: float | None = 10.0,
    admitted: bool = True,
    connected: bool = True,
    rpc_ready: bool = True,
) -> PeerSnapshot:
    ann = PeerAnnouncement(
        pid,
        role,
        serving_models=models,
        vram_bytes=4_000_000_000,
        llama_build="abc-cpu",
        rpc_ready=rpc_ready,
    )
    return PeerSnapshot(pid, ann, rtt, admitted=admitted, connected=connected)


def member(pid: bytes, rtt: float | None = 10.0, rpc_ready: bool = True) -> Member:
    return Member(pid, 4_000_000_000, rtt, "abc-cpu", rpc_ready)


def test_peers_declaring_the_model_form_the_group() -> None:
    group = split_group("m", [peer(A, "m"), peer(B, "other"), peer(C, "m", rtt=None)])
    assert group == SplitGroup((member(A), member(C, rtt=None)), (), ((B, "serves other, not m"),))


def test_idle_workers_with_an_rpc_server_help() -> None:
    group = split_group("m", [peer(A), peer(B, rpc_ready=False), peer(C, "m")])
    assert group.helpers == (member(A),)
    assert group.peers == (member(C),)
    assert group.ignored == ((B, "idle, but its rpc-server is not running"),)


def test_clients_unadmitted_and_disconnected_peers_take_no_part() -> None:
    group = split_group(
        "m",
        [
            peer(A, "m", role=NodeRole.CLIENT),
            peer(B, "m", admitted=False),
            peer(C, "m", connected=False),
            peer(D, admitted=False),
        ],
    )
    assert group == SplitGroup(
        (),
        (),
        (
            (A, "a client (runs no models)"),
            (B, "not admitted yet (has not gossiped over its own connection)"),
            (C, "not connected"),
            (D, "not admitted yet (has not gossiped over its own connection)"),
        ),
    )


def test_a_host_serving_the_model_is_in_the_group() -> None:
    assert split_group("m", [peer(A, "m", role=NodeRole.HOST)]).peers == (member(A),)
