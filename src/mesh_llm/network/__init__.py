"""network package."""

from mesh_llm.network.ingress import (
    Ingress,
    UpstreamStream,
    connect_local,
    render_openai_error,
)
from mesh_llm.network.routing import (
    RoutingFields,
    RoutingSnapshot,
    Target,
    choose_candidates,
    extract_routing_fields,
    is_context_overflow_400,
    order_by_context_fit,
    required_context,
)

__all__: list[str] = [
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
    "render_openai_error",
    "required_context",
]
