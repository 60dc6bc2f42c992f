"""The iroh adapter (endpoints, connections, streams): the only code touching the iroh bindings."""

from mesh_llm.network.transport.endpoint import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RELAY_URLS,
    MAX_CONCURRENT_BI_STREAMS,
    BiStream,
    Conn,
    Transport,
    generate_key,
    load_or_create_key,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RELAY_URLS",
    "MAX_CONCURRENT_BI_STREAMS",
    "BiStream",
    "Conn",
    "Transport",
    "generate_key",
    "load_or_create_key",
]
