"""``/api/status`` and ``/api/runtime*`` rendered from a frozen node view: the strings users'
scripts read stay exactly what they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_llm import __version__
from mesh_llm.inference import Backend, BackendBinaries, Plan, PlanKind, ServerState
from mesh_llm.mesh import JoinState, JoinStatus, PeerView
from mesh_llm.network import RoutingSnapshot, Target
from mesh_llm.protocol import NodeRole, PeerId
from mesh_llm.runtime import status as render
from mesh_llm.runtime.states import ModelRole, NodeState, RunnerMode, RunnerState, runner_state
from mesh_llm.runtime.view import NodeView, PeerRow, RunnerView, node_state
from mesh_llm.system import GpuInfo, HardwareSurvey

A, B = bytes([2]) * 32, bytes([3]) * 32


def runner(
    name: str = "m",
    state: RunnerState = RunnerState.READY,
    *,
    mode: RunnerMode = RunnerMode.SOLO,
    role: ModelRole = ModelRole.CHAT,
    plan: Plan | None = None,
    pid: int | None = 42,
) -> RunnerView:
    return RunnerView(
        name=name,
        mode=mode,
        role=role,
        path=Path(f"/models/{name}.gguf"),
        state=state,
        ctx_size=4096,
        port=8001,
        pid=pid,
        restarts=1,
        last_error="crashed once",
        log_path=Path("/logs/m.log"),
        architecture="llama",
        layers=30,
        quantization="Q8_0",
        size_bytes=2_000_000_000,
        plan=plan,
    )


def view(*runners: RunnerView, **kw: object) -> NodeView:
    target = Target("m", "local:8001", 8001, None, 4096)
    fields: dict[str, object] = {
        "client": False,
        "runners": runners,
        "sidecars": (),
        "requested_models": ("m",),
        "api_port": 9337,
        "console_port": 3131,
        "capacity": 4_000_000_000,
        "routing": RoutingSnapshot(targets={"m": [target]}, serving=True),
        "started_at": 1000.0,
        "now": 1061.5,
    }
    fields.update(kw)
    return NodeView(**fields)  # type: ignore[arg-type]


def test_status_of_a_serving_node() -> None:
    survey = HardwareSurvey(8_000_000_000, (GpuInfo("gpu0", 1),), False, "box")
    binaries = BackendBinaries(
        Path("/b/llama-server"), Path("/b/rpc-server"), "cache", "0c1e570", Backend.CPU
    )
    peer = PeerView(
        A,
        NodeRole.HOST,
        ("x",),
        ("x",),
        5_000_000_000,
        "0.1.0",
        12,
        True,
        True,
        2.04,
        hostname="gpu-box",
        llama_build="0c1e570-cpu",
    )
    status = render.status(
        view(
            runner(),
            node_id=A.hex(),
            token="tok",
            mesh_id="mesh",
            peers=(PeerRow(peer, 10, 20),),
            inflight=1,
            requests_total=7,
            substitutions_total=3,
            substitutions=(("gpt-4o", 3),),
            survey=survey,
            binaries=binaries,
            rpc={"port": 5},
            relay={"native": True},
        )
    )
    assert status == {
        "version": __version__,
        "node_id": A.hex()[:10],
        "node_id_full": A.hex(),
        "token": "tok",
        "mesh_id": "mesh",
        "node_status": "Serving",
        "is_host": True,
        "is_client": False,
        "llama_ready": True,
        "model_name": "m",
        "models": ["m"],
        "available_models": ["m"],
        "requested_models": ["m"],
        "serving_models": ["m"],
        "hosted_models": ["m"],
        "api_port": 9337,
        "console_port": 3131,
        "my_vram_gb": 4.0,
        "model_size_gb": 2.0,
        "peers": [
            {
                "id": A.hex(),
                "short_id": A.hex()[:10],
                "role": "Host",
                "models": ["x"],
                "serving_models": ["x"],
                "hosted_models": ["x"],
                "hosted_models_known": True,
                "vram_gb": 5.0,
                "version": "0.1.0",
                "hostname": "gpu-box",
                "llama_build": "0c1e570-cpu",
                "rtt_ms": 12,
                "direct": True,
                "connected": True,
                "last_seen_secs_ago": 2.0,
                "tunnel_bytes_sent": 10,
                "tunnel_bytes_received": 20,
            }
        ],
        "mesh_models": ["m"],
        "inflight_requests": 1,
        "requests_total": 7,
        "model_substitution": {
            "enabled": True,
            "substituted_total": 3,
            "by_model": {"gpt-4o": 3},
        },
        "my_hostname": "box",
        "my_is_soc": False,
        "gpus": [{"name": "gpu0", "vram_bytes": 1}],
        "llama_cpp": {
            "commit": "0c1e570",
            "backend": "cpu",
            "build_id": "0c1e570-cpu",
            "llama_server": "/b/llama-server",
        },
        "local_models": [
            {
                "name": "m",
                "mode": "solo",
                "path": "/models/m.gguf",
                "status": "ready",
                "port": 8001,
                "pid": 42,
                "ctx_size": 4096,
                "restarts": 1,
                "error": None,
                "log": "/logs/m.log",
                "architecture": "llama",
                "layers": 30,
                "quantization": "Q8_0",
                "size_bytes": 2_000_000_000,
                "draining": False,
                "role": "chat",
            }
        ],
        "rpc_server": {"port": 5},
        "relay": {"native": True},
        "uptime_secs": 61,
        "join": None,
        "demand": [],
        "standby_reason": None,
        "models_on_disk": [],
    }


def test_a_split_runner_lists_its_plan_and_a_failed_one_its_error() -> None:
    plan = Plan(PlanKind.WORKER, host=B, reason="B hosts", excluded=((A, "RTT"),))
    split, failed = (
        render.runner_json(runner(state=RunnerState.WORKER, mode=RunnerMode.SPLIT, plan=plan)),
        render.runner_json(runner(state=RunnerState.FAILED)),
    )
    assert split["status"] == "worker"
    assert split["split"] == {
        "role": "worker",
        "host": B.hex(),
        "workers": [],
        "tensor_split": None,
        "reason": "B hosts",
        "excluded": [{"id": A.hex(), "reason": "RTT"}],
    }
    assert list(split)[-2:] == ["split", "role"]
    unplanned = render.runner_json(runner(state=RunnerState.STARTING, mode=RunnerMode.SPLIT))
    assert unplanned["split"] is None
    assert failed["error"] == "crashed once"
    assert "split" not in failed


def test_join_field_names_state_reason_and_peer() -> None:
    join = JoinStatus(JoinState.FAILED, A, "no answer within 15 s", 2)
    status = render.status(view(client=True, runners=(), bootstrap=True, join=join))
    assert status["join"] == {
        "state": "failed",
        "reason": "no answer within 15 s",
        "peer": A.hex(),
        "short_id": A.hex()[:10],
        "attempts": 2,
        "summary": f"could not reach {A.hex()[:10]}: no answer within 15 s",
    }
    assert status["node_status"] == "Client"


@pytest.mark.parametrize(
    ("runners", "kw", "expected"),
    [
        ((), {"client": True}, NodeState.CLIENT),
        ((runner(),), {}, NodeState.SERVING),
        (
            (runner(mode=RunnerMode.SPLIT, plan=Plan(PlanKind.HOST)),),
            {},
            NodeState.SERVING_SPLIT,
        ),
        (
            (runner(state=RunnerState.WORKER, mode=RunnerMode.SPLIT, plan=Plan(PlanKind.WORKER)),),
            {},
            NodeState.WORKER_SPLIT,
        ),
        ((runner(state=RunnerState.STARTING),), {}, NodeState.STARTING),
        ((), {"bootstrap": True}, NodeState.STANDBY),
        ((), {}, NodeState.IDLE),
    ],
)
def test_node_state(
    runners: tuple[RunnerView, ...], kw: dict[str, object], expected: NodeState
) -> None:
    v = view(*runners, **kw)
    assert node_state(v) is expected
    assert render.status(v)["node_status"] == expected.value


def test_node_state_strings_never_change() -> None:
    assert [s.value for s in NodeState] == [
        "Client",
        "Serving",
        "Serving (split)",
        "Worker (split)",
        "Starting",
        "Standby",
        "Idle",
    ]
    assert {s.value for s in RunnerState} == {
        "idle", "starting", "ready", "restarting", "failed", "stopped", "worker", "wait"
    }  # fmt: skip


def test_runtime_models_folds_restarting_into_starting() -> None:
    states = [RunnerState.RESTARTING, RunnerState.READY, RunnerState.WAIT, RunnerState.IDLE]
    rendered = render.runtime_models(view(*(runner(f"m{i}", s) for i, s in enumerate(states))))
    assert [m["status"] for m in rendered["models"]] == ["starting", "ready", "wait", "idle"]  # type: ignore[index]


def test_runtime_processes_lists_running_processes_with_their_role() -> None:
    sidecar = runner("m", role=ModelRole.EMBEDDINGS)
    rendered = render.runtime_processes(view(runner(pid=None), sidecars=(sidecar,)))
    assert rendered == {
        "processes": [
            {
                "name": "m",
                "role": "embeddings",
                "backend": "llama",
                "status": "ready",
                "port": 8001,
                "pid": 42,
            }
        ]
    }


@pytest.mark.parametrize(
    ("server", "plan", "split", "expected"),
    [
        (None, None, False, RunnerState.IDLE),
        (ServerState.READY, None, False, RunnerState.READY),
        (ServerState.RESTARTING, None, False, RunnerState.RESTARTING),
        (None, None, True, RunnerState.STARTING),
        (None, PlanKind.WORKER, True, RunnerState.WORKER),
        (None, PlanKind.WAIT, True, RunnerState.WAIT),
        (ServerState.STARTING, PlanKind.HOST, True, RunnerState.STARTING),
        (ServerState.FAILED, PlanKind.HOST, True, RunnerState.FAILED),
        (None, PlanKind.HOST, True, RunnerState.IDLE),
    ],
)
def test_runner_state(
    server: ServerState | None, plan: PlanKind | None, split: bool, expected: RunnerState
) -> None:
    assert runner_state(server, plan, split=split) is expected


def test_models_listing_from_the_routing_snapshot() -> None:
    targets = {
        "m": [
            Target("m", "local:1", 1, None, 4096),
            Target("m", f"peer:{B.hex()}", None, PeerId(B), 2048),
        ],
        "gone": [],
    }
    listing = render.models_listing(RoutingSnapshot(targets=targets, serving=True), 1000.9)
    assert [(m["id"], m["created"], m["context_length"], m["node_count"]) for m in listing] == [
        ("m", 1000, 4096, 2)
    ]
