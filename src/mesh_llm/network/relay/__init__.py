"""Relay threads that move a response's bytes between sockets and streams, in C where built."""

from mesh_llm.network.relay.native import prepare as prepare_native_relay
from mesh_llm.network.relay.native import status as native_relay_status
from mesh_llm.network.relay.threads import (
    RELAY_IDLE_S,
    RELAY_READ,
    STALL_CAP,
    BlockingSink,
    BlockingSource,
    ClientGoneError,
    Interrupt,
    NativeEnd,
    dup_socket,
    relay_from,
    relay_socket,
    relay_socket_into,
    release_socket,
    run_relay,
    take_over_socket,
)

__all__ = [
    "RELAY_IDLE_S",
    "RELAY_READ",
    "STALL_CAP",
    "BlockingSink",
    "BlockingSource",
    "ClientGoneError",
    "Interrupt",
    "NativeEnd",
    "dup_socket",
    "native_relay_status",
    "prepare_native_relay",
    "relay_from",
    "relay_socket",
    "relay_socket_into",
    "release_socket",
    "run_relay",
    "take_over_socket",
]
