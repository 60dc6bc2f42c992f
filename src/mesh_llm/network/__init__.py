"""Sockets and streams: the iroh transport, relay threads, the :9337 HTTP proxy and the RPC tunnel.

Rooms, each importing only the ones below it (an import-linter contract)::

    proxy | rpc      the :9337 ingress, routing, HTTP tunnels | the RPC tunnel (stream 0x02)
    relay            relay threads (Python or C loops) between sockets and streams
    transport        the iroh adapter; the only code that touches the bindings
"""

from mesh_llm.network.proxy import (
    COLD_START_TIMEOUT_S,
    EMBEDDING_PATHS,
    JSON_API_PATHS,
    UNAUTHORIZED_MESSAGE,
    ApiKeys,
    Ingress,
    PeerTraffic,
    RoutingFields,
    RoutingSnapshot,
    Target,
    TunnelStream,
    UpstreamStream,
    Warmup,
    choose_candidates,
    connect_local,
    extract_routing_fields,
    is_context_overflow_400,
    no_target_error,
    order_by_context_fit,
    render_api_error,
    render_openai_error,
    required_context,
    snapshot_for_path,
)
from mesh_llm.network.relay import native_relay_status, prepare_native_relay
from mesh_llm.network.relay.native import build as build_native_relay
from mesh_llm.network.rpc import (
    RpcStream,
    RpcTunnelHost,
    WeightStore,
    WorkerSources,
    serve_rpc_tunnel,
)
from mesh_llm.network.transport import (
    DEFAULT_RELAY_URLS,
    BiStream,
    Conn,
    Transport,
    generate_key,
    load_or_create_key,
)

__all__: list[str] = [
    "COLD_START_TIMEOUT_S",
    "EMBEDDING_PATHS",
    "JSON_API_PATHS",
    "UNAUTHORIZED_MESSAGE",
    "ApiKeys",
    "Ingress",
    "PeerTraffic",
    "RoutingFields",
    "RoutingSnapshot",
    "Target",
    "TunnelStream",
    "UpstreamStream",
    "Warmup",
    "choose_candidates",
    "connect_local",
    "extract_routing_fields",
    "is_context_overflow_400",
    "no_target_error",
    "order_by_context_fit",
    "render_api_error",
    "render_openai_error",
    "required_context",
    "snapshot_for_path",
]
__all__ += [
    "build_native_relay",
    "native_relay_status",
    "prepare_native_relay",
]
__all__ += [
    "RpcStream",
    "RpcTunnelHost",
    "WeightStore",
    "WorkerSources",
    "serve_rpc_tunnel",
]
__all__ += [
    "DEFAULT_RELAY_URLS",
    "BiStream",
    "Conn",
    "Transport",
    "generate_key",
    "load_or_create_key",
]
