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
from mesh_llm.network.transport.ffi import LAYOUT_KEYS, FfiStreams, bindings_layout, ffi_streams

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RELAY_URLS",
    "LAYOUT_KEYS",
    "MAX_CONCURRENT_BI_STREAMS",
    "BiStream",
    "Conn",
    "FfiStreams",
    "Transport",
    "bindings_layout",
    "ffi_streams",
    "generate_key",
    "load_or_create_key",
]
