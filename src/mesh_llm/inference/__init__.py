"""llama.cpp backend (locate/build), launch planning, process supervision."""

from mesh_llm.inference.backend import (
    LLAMA_CPP_COMMIT,
    Backend,
    BackendBinaries,
    build_backend,
    detect_backend,
    ensure_backend,
    locate_backend,
    probe_devices,
)
from mesh_llm.inference.children import ChildProcess, PidRegistry, reap_recorded_children, stop_pid
from mesh_llm.inference.launch import (
    DEFAULT_PARALLEL,
    LaunchSpec,
    ServerFeatures,
    choose_ctx_size,
    llama_server_argv,
)
from mesh_llm.inference.placement import (
    FIT_FACTOR,
    MAX_SPLIT_RTT_MS,
    Member,
    Plan,
    PlanKind,
    fits_solo,
    plan_model,
    tensor_split,
)
from mesh_llm.inference.supervisor import (
    RestartPolicy,
    ServerState,
    ServerSupervisor,
    free_port,
    probe_health,
)

__all__ = [
    "DEFAULT_PARALLEL",
    "FIT_FACTOR",
    "LLAMA_CPP_COMMIT",
    "MAX_SPLIT_RTT_MS",
    "Backend",
    "BackendBinaries",
    "ChildProcess",
    "LaunchSpec",
    "Member",
    "PidRegistry",
    "Plan",
    "PlanKind",
    "RestartPolicy",
    "ServerFeatures",
    "ServerState",
    "ServerSupervisor",
    "build_backend",
    "choose_ctx_size",
    "detect_backend",
    "ensure_backend",
    "fits_solo",
    "free_port",
    "llama_server_argv",
    "locate_backend",
    "plan_model",
    "probe_devices",
    "probe_health",
    "reap_recorded_children",
    "stop_pid",
    "tensor_split",
]
