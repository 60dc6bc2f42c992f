"""The bindings' stream calls for a loop that makes them itself (the C relay loops).

:func:`ffi_streams` hands out what such a loop needs and nothing more: the addresses of the
uniffi entry points a stream write and a stream read take (:data:`ENTRY_POINTS`, the same calls
:mod:`._iroh_direct` makes), the layout of uniffi's ``RustBuffer`` and ``RustCallStatus`` as the
bindings' own ctypes definitions declare them (so the loop can refuse a layout it was not written
for), fresh call-status structures, and a way to describe a failed call.
:meth:`~mesh_llm.network.transport.BiStream.send_handle` and ``recv_handle`` give a stream's
halves as the integer handles these calls take; no binding object leaves the transport.

It is offered only while the fast path is on and the bindings match what the direct calls were
written against (:func:`._iroh_direct.available`); otherwise :func:`ffi_streams` is None and the
loops must use :meth:`~mesh_llm.network.transport.BiStream.read_blocking`/``write_blocking``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from iroh import iroh_ffi

from mesh_llm.network.transport import _iroh_direct

__all__ = ["ENTRY_POINTS", "LAYOUT_KEYS", "FfiStreams", "bindings_layout", "ffi_streams"]

ENTRY_POINTS: Final = tuple(_iroh_direct.ENTRY_POINTS)
"""The uniffi symbols :attr:`FfiStreams.entry_points` holds, in this order."""

LAYOUT_KEYS: Final = (
    "RustBuffer.size",
    "RustBuffer.capacity.offset",
    "RustBuffer.capacity.size",
    "RustBuffer.len.offset",
    "RustBuffer.len.size",
    "RustBuffer.data.offset",
    "RustBuffer.data.size",
    "RustCallStatus.size",
    "RustCallStatus.code.offset",
    "RustCallStatus.code.size",
    "RustCallStatus.error_buf.offset",
    "RustCallStatus.error_buf.size",
)
"""The sizes and offsets (bytes) :attr:`FfiStreams.layout` holds, in this order."""


@dataclass(frozen=True, slots=True)
class FfiStreams:
    """What a loop outside Python needs to read and write streams through the bindings."""

    entry_points: Mapping[str, int]
    """Symbol name (:data:`ENTRY_POINTS`) -> function address."""
    layout: Mapping[str, int]
    """:data:`LAYOUT_KEYS` -> bytes, from the bindings' ctypes definitions."""

    def call_status(self) -> ctypes.Structure:
        """A fresh ``RustCallStatus`` (success) to pass by address; read ``.code`` after."""
        status: ctypes.Structure = iroh_ffi._UniffiRustCallStatus()
        return status

    def describe(self, status: Any) -> str:
        """Describe (and free) the error a failed call left in ``status``."""
        return _iroh_direct.describe_status(status)


def bindings_layout() -> dict[str, int]:
    """:data:`LAYOUT_KEYS` as the bindings' ctypes structures lay them out."""
    buffer, status = iroh_ffi._UniffiRustBuffer, iroh_ffi._UniffiRustCallStatus
    out = {"RustBuffer.size": ctypes.sizeof(buffer), "RustCallStatus.size": ctypes.sizeof(status)}
    for struct, fields in ((buffer, ("capacity", "len", "data")), (status, ("code", "error_buf"))):
        name = "RustBuffer" if struct is buffer else "RustCallStatus"
        for field in fields:
            descriptor = getattr(struct, field)
            out[f"{name}.{field}.offset"] = descriptor.offset
            out[f"{name}.{field}.size"] = descriptor.size
    return {key: out[key] for key in LAYOUT_KEYS}


_offered: FfiStreams | None = None


def ffi_streams() -> FfiStreams | None:
    """The bindings' stream calls for a foreign loop, or None while they may not be used."""
    global _offered
    if not _iroh_direct.available():
        return None
    if _offered is None:
        lib = _iroh_direct.ffi_library()
        addresses = {
            name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
            for name in ENTRY_POINTS
        }
        _offered = FfiStreams(MappingProxyType(addresses), MappingProxyType(bindings_layout()))
    return _offered
