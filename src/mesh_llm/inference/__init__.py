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
from mesh_llm.inference.supervisor import (
    RestartPolicy,
    ServerState,
    ServerSupervisor,
    free_port,
    probe_health,
)

__all__ = [
    "DEFAULT_PARALLEL",
    "LLAMA_CPP_COMMIT",
    "Backend",
    "BackendBinaries",
    "ChildProcess",
    "LaunchSpec",
    "PidRegistry",
    "RestartPolicy",
    "ServerFeatures",
    "ServerState",
    "ServerSupervisor",
    "build_backend",
    "choose_ctx_size",
    "detect_backend",
    "ensure_backend",
    "free_port",
    "llama_server_argv",
    "locate_backend",
    "probe_devices",
    "probe_health",
    "reap_recorded_children",
    "stop_pid",
]
