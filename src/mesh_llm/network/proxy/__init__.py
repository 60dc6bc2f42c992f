"""The :9337 HTTP ingress: routing, upstream connections (local llama-servers, HTTP tunnels)."""

from mesh_llm.network.proxy.auth import UNAUTHORIZED_MESSAGE, ApiKeys
from mesh_llm.network.proxy.ingress import (
    ByteCounter,
    Ingress,
    render_api_error,
    render_openai_error,
)
from mesh_llm.network.proxy.routing import (
    EMBEDDING_PATHS,
    JSON_API_PATHS,
    RoutingFields,
    RoutingSnapshot,
    Target,
    choose_candidates,
    extract_routing_fields,
    is_context_overflow_400,
    no_target_error,
    order_by_context_fit,
    required_context,
    snapshot_for_path,
)
from mesh_llm.network.proxy.tunnel import PeerTraffic, TunnelStream
from mesh_llm.network.proxy.upstream import TcpUpstream, UpstreamStream, connect_local
from mesh_llm.network.proxy.warmup import COLD_START_TIMEOUT_S, Warmup

__all__ = [
    "COLD_START_TIMEOUT_S",
    "EMBEDDING_PATHS",
    "JSON_API_PATHS",
    "UNAUTHORIZED_MESSAGE",
    "ApiKeys",
    "ByteCounter",
    "Ingress",
    "PeerTraffic",
    "RoutingFields",
    "RoutingSnapshot",
    "Target",
    "TcpUpstream",
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
