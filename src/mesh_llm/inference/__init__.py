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
    EMBEDDING_BATCH,
    EMBEDDING_CTX,
    EMBEDDING_PARALLEL,
    LaunchSpec,
    ServerFeatures,
    choose_ctx_size,
    is_embedding_model,
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
from mesh_llm.inference.rpc_server import RpcServer, rpc_server_argv
from mesh_llm.inference.rpc_weights import host_weights, local_weight_files
from mesh_llm.inference.supervisor import (
    RestartPolicy,
    ServerState,
    ServerSupervisor,
    free_port,
    probe_health,
)

__all__ = [
    "DEFAULT_PARALLEL",
    "EMBEDDING_BATCH",
    "EMBEDDING_CTX",
    "EMBEDDING_PARALLEL",
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
    "RpcServer",
    "ServerFeatures",
    "ServerState",
    "ServerSupervisor",
    "build_backend",
    "choose_ctx_size",
    "detect_backend",
    "ensure_backend",
    "fits_solo",
    "free_port",
    "host_weights",
    "is_embedding_model",
    "llama_server_argv",
    "local_weight_files",
    "locate_backend",
    "plan_model",
    "probe_devices",
    "probe_health",
    "reap_recorded_children",
    "rpc_server_argv",
    "stop_pid",
    "tensor_split",
]
