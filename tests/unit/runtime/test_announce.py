"""The self announcement: role from the runners, ports only for hosts, served models in order."""

from __future__ import annotations

from pathlib import Path

from mesh_llm import __version__
from mesh_llm.protocol import EndpointAddrInfo, NodeRole, PeerAnnouncement, ServedModel
from mesh_llm.runtime.announce import node_role, self_announcement
from mesh_llm.runtime.states import ModelRole, RunnerMode, RunnerState
from mesh_llm.runtime.view import RunnerView

ME = bytes([7]) * 32
ADDR = EndpointAddrInfo.create(ME.hex(), ip_addrs=["127.0.0.1:5000"])


def runner(name: str, state: RunnerState) -> RunnerView:
    return RunnerView(
        name=name,
        mode=RunnerMode.SOLO,
        role=ModelRole.CHAT,
        path=Path(f"/m/{name}.gguf"),
        state=state,
        ctx_size=4096,
        identity=f"id-{name}",
    )


def announce(runners: list[RunnerView], *, client: bool = False) -> PeerAnnouncement:
    return self_announcement(
        endpoint_id=ME,
        addr=ADDR,
        client=client,
        runners=runners,
        api_port=9337,
        catalog_models=("a",),
        capacity=5_000,
        is_soc=False,
        llama_build="abc-cpu",
        rpc_ready=True,
    )


def test_a_ready_model_makes_a_host_that_announces_its_port() -> None:
    got = announce([runner("a", RunnerState.READY), runner("b", RunnerState.STARTING)])
    assert got == PeerAnnouncement(
        endpoint_id=ME,
        role=NodeRole.HOST,
        http_port=9337,
        version=__version__,
        addr=ADDR,
        serving_models=("a", "b"),
        hosted_models=("a",),
        hosted_models_known=True,
        catalog_models=("a",),
        primary_serving="a",
        served_models=(
            ServedModel("a", "id-a", 4096, True),
            ServedModel("b", "id-b", 4096, False),
        ),
        vram_bytes=5_000,
        is_soc=False,
        llama_build="abc-cpu",
        rpc_ready=True,
    )


def test_nothing_ready_is_a_worker_without_port() -> None:
    got = announce([runner("a", RunnerState.STARTING)])
    assert (got.role, got.http_port, got.hosted_models) == (NodeRole.WORKER, None, ())


def test_a_client_is_a_client_whatever_it_runs() -> None:
    assert node_role(True, [runner("a", RunnerState.READY)]) is NodeRole.CLIENT
    got = announce([], client=True)
    assert (got.role, got.primary_serving, got.served_models) == (NodeRole.CLIENT, None, ())
