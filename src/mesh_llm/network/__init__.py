"""network package."""

from mesh_llm.network.ingress import (
    Ingress,
    render_api_error,
    render_openai_error,
)
from mesh_llm.network.iroh_patch import apply as apply_iroh_patch
from mesh_llm.network.native_relay import prepare as prepare_native_relay
from mesh_llm.network.native_relay import status as native_relay_status
from mesh_llm.network.routing import (
    EMBEDDING_PATHS,
    JSON_API_PATHS,
    RoutingFields,
    RoutingSnapshot,
    Target,
    choose_candidates,
    extract_routing_fields,
    is_context_overflow_400,
    order_by_context_fit,
    required_context,
    snapshot_for_path,
)
from mesh_llm.network.rpc_splice import HostWeights, RpcTunnelStats, TensorLocation
from mesh_llm.network.rpc_store import DEFAULT_STORE_CAP_BYTES, RpcStore
from mesh_llm.network.rpc_tunnel import RpcStream, RpcTunnelHost, WorkerSources, serve_rpc_tunnel
from mesh_llm.network.transport import (
    DEFAULT_RELAY_URLS,
    BiStream,
    Conn,
    Transport,
    generate_key,
    load_or_create_key,
)
from mesh_llm.network.upstream import UpstreamStream, connect_local

__all__: list[str] = [
    "EMBEDDING_PATHS",
    "JSON_API_PATHS",
    "Ingress",
    "RoutingFields",
    "RoutingSnapshot",
    "Target",
    "UpstreamStream",
    "choose_candidates",
    "connect_local",
    "extract_routing_fields",
    "is_context_overflow_400",
    "order_by_context_fit",
    "render_api_error",
    "render_openai_error",
    "required_context",
    "snapshot_for_path",
]
__all__ += [
    "DEFAULT_RELAY_URLS",
    "BiStream",
    "Conn",
    "Transport",
    "apply_iroh_patch",
    "generate_key",
    "load_or_create_key",
    "native_relay_status",
    "prepare_native_relay",
]
__all__ += [
    "DEFAULT_STORE_CAP_BYTES",
    "HostWeights",
    "RpcStore",
    "RpcStream",
    "RpcTunnelHost",
    "RpcTunnelStats",
    "TensorLocation",
    "WorkerSources",
    "serve_rpc_tunnel",
]
