"""Direct FFI calls for the two operations a relay thread makes per streamed token: a stream
write and a stream read.

The generated method behind ``SendStream.write_all`` / ``RecvStream.read`` spends most of its time
in Python, not in Rust: a coroutine, a fresh call-status structure for each of the six FFI calls, a
buffer builder for the argument, a reader object for the result (CPU per write and read:
docs/BENCHMARKS.md, "iroh stream transport", from ``bench/bench_transport.py``). This module makes
the same FFI calls in the same order (clone the object handle, lower the argument, start the Rust
future, poll it until READY with :mod:`.iroh_async`'s continuation, complete it, free it) with one
reused call-status per thread and a single copy of the payload.

:func:`available` is True only when the bindings still have the exact entry points and argument
types this was written against, and when a round trip through the generated converters
encodes ``bytes`` the way this module does (a big-endian i32 length, then the bytes). Otherwise
:class:`~mesh_llm.network.transport.BiStream` keeps using the generated methods.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from typing import Any, Final

from iroh import iroh_ffi

from mesh_llm.network.transport import _iroh_async as iroh_async

__all__ = [
    "available",
    "describe_error",
    "describe_status",
    "ffi_library",
    "read",
    "write_all",
]

_LEN: Final = struct.Struct(">i")
_U64: Final = ctypes.c_uint64
ENTRY_POINTS: Final = {  # name: (result, arguments)
    "uniffi_iroh_ffi_fn_clone_sendstream": ("handle", ("handle", "status")),
    "uniffi_iroh_ffi_fn_clone_recvstream": ("handle", ("handle", "status")),
    "ffi_iroh_ffi_rustbuffer_alloc": ("buffer", ("u64", "status")),
    "ffi_iroh_ffi_rustbuffer_free": (None, ("buffer", "status")),
    "uniffi_iroh_ffi_fn_method_sendstream_write_all": ("u64", ("handle", "buffer")),
    "uniffi_iroh_ffi_fn_method_recvstream_read": ("u64", ("handle", "u32")),
    "ffi_iroh_ffi_rust_future_poll_void": (None, ("u64", "callback", "u64")),
    "ffi_iroh_ffi_rust_future_complete_void": (None, ("u64", "status")),
    "ffi_iroh_ffi_rust_future_free_void": (None, ("u64",)),
    "ffi_iroh_ffi_rust_future_poll_rust_buffer": (None, ("u64", "callback", "u64")),
    "ffi_iroh_ffi_rust_future_complete_rust_buffer": ("buffer", ("u64", "status")),
    "ffi_iroh_ffi_rust_future_free_rust_buffer": (None, ("u64",)),
}
"""The entry points the direct calls (and the C relay loops) make, with the C types they assume."""

_local = threading.local()
_checked: bool | None = None


def _status() -> Any:
    """This thread's call-status structure, reset to success."""
    status = getattr(_local, "status", None)
    if status is None:
        status = _local.status = iroh_ffi._UniffiRustCallStatus()
    status.code = 0
    return status


def ffi_library() -> Any:
    """The bindings' ctypes library (the entry points :func:`available` checked)."""
    return iroh_ffi._UniffiLib


def describe_error(exc: BaseException) -> str:
    """A one-line description of an error raised by the bindings."""
    if isinstance(exc, iroh_ffi.IrohError):
        try:
            return f"{exc.kind().name.lower()}: {exc.message()}"
        except Exception:  # noqa: BLE001 - describing an error must not raise
            return repr(exc)
    return str(exc) or type(exc).__name__


def describe_status(status: Any) -> str:
    """Describe (and free) the error a failed call left in ``status``."""
    try:
        _check(status)
    except (iroh_ffi.IrohError, iroh_ffi.InternalError) as exc:
        return describe_error(exc)
    return "no error"


def _check(status: Any) -> None:
    if status.code:
        iroh_ffi._uniffi_check_call_status(
            iroh_ffi._UniffiFfiConverterTypeIrohError__as_error, status
        )


def _drive(
    future: int, poll: Any, cancel: threading.Event | None, deadline: float | None = None
) -> None:
    """Poll ``future`` until READY, waiting for Rust's continuation on this thread."""
    ready = iroh_ffi._UNIFFI_RUST_FUTURE_POLL_READY
    while iroh_async.poll_blocking(future, poll, cancel, deadline) != ready:
        pass


def write_all(send: Any, data: bytes, cancel: threading.Event | None = None) -> None:
    """``send.write_all(data)`` for a thread without an event loop; setting ``cancel`` gives it
    up like :func:`.iroh_async.run_blocking`."""
    lib = iroh_ffi._UniffiLib
    status = _status()
    handle = lib.uniffi_iroh_ffi_fn_clone_sendstream(send._handle, ctypes.byref(status))
    _check(status)
    size = len(data)
    buffer = lib.ffi_iroh_ffi_rustbuffer_alloc(size + 4, ctypes.byref(status))
    _check(status)
    ctypes.memmove(buffer.data, _LEN.pack(size), 4)
    ctypes.memmove(ctypes.addressof(buffer.data.contents) + 4, data, size)
    buffer.len = size + 4
    future = lib.uniffi_iroh_ffi_fn_method_sendstream_write_all(handle, buffer)
    try:
        _drive(future, lib.ffi_iroh_ffi_rust_future_poll_void, cancel)
        status = _status()
        lib.ffi_iroh_ffi_rust_future_complete_void(future, ctypes.byref(status))
        _check(status)
    finally:
        lib.ffi_iroh_ffi_rust_future_free_void(future)


def read(
    recv: Any,
    size_limit: int,
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> bytes:
    """``recv.read(size_limit)`` for a thread without an event loop; ``b""`` at the end. Gives
    up like :func:`.iroh_async.run_blocking` (``cancel``, ``timeout``), having read nothing."""
    deadline = None if timeout is None else time.monotonic() + timeout
    lib = iroh_ffi._UniffiLib
    status = _status()
    handle = lib.uniffi_iroh_ffi_fn_clone_recvstream(recv._handle, ctypes.byref(status))
    _check(status)
    future = lib.uniffi_iroh_ffi_fn_method_recvstream_read(handle, size_limit)
    try:
        _drive(future, lib.ffi_iroh_ffi_rust_future_poll_rust_buffer, cancel, deadline)
        status = _status()
        buffer = lib.ffi_iroh_ffi_rust_future_complete_rust_buffer(future, ctypes.byref(status))
        _check(status)
    finally:
        lib.ffi_iroh_ffi_rust_future_free_rust_buffer(future)
    try:
        return _lift_bytes(buffer)
    finally:
        status = _status()
        lib.ffi_iroh_ffi_rustbuffer_free(buffer, ctypes.byref(status))
        _check(status)


def _lift_bytes(buffer: Any) -> bytes:
    if buffer.len < 4:
        raise iroh_ffi.InternalError("a bytes result shorter than its length prefix")
    start = ctypes.addressof(buffer.data.contents)
    (size,) = _LEN.unpack(ctypes.string_at(start, 4))
    if size < 0 or size + 4 > buffer.len:
        raise iroh_ffi.InternalError("a bytes result with an impossible length")
    return ctypes.string_at(start + 4, size)


def _signature_matches(name: str, result: str | None, kinds: tuple[str, ...]) -> bool:
    lib = iroh_ffi._UniffiLib
    expected: dict[str | None, Any] = {
        None: None,
        "handle": _U64,
        "u64": _U64,
        "u32": ctypes.c_uint32,
        "buffer": iroh_ffi._UniffiRustBuffer,
        "status": ctypes.POINTER(iroh_ffi._UniffiRustCallStatus),
        "callback": iroh_ffi._UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK,
    }
    function = getattr(lib, name, None)
    argtypes = getattr(function, "argtypes", None)
    return (
        argtypes is not None
        and tuple(argtypes) == tuple(expected[k] for k in kinds)
        and getattr(function, "restype", None) == expected[result]
    )


def _encoding_matches() -> bool:
    """The generated converters lower and lift ``bytes`` as this module does."""
    sample = b"mesh-llm\x00\xff"
    lowered = iroh_ffi._UniffiFfiConverterBytes.lower(sample)
    try:
        raw = ctypes.string_at(ctypes.addressof(lowered.data.contents), lowered.len)
        if raw != _LEN.pack(len(sample)) + sample or _lift_bytes(lowered) != sample:
            return False
    finally:
        lowered.free()
    return True


def available() -> bool:
    """True if the direct calls can replace the generated ones: :mod:`.iroh_async`'s driver is
    installed (its continuation is used) and the bindings match (checked once)."""
    global _checked
    if not iroh_async.is_installed():
        return False
    if _checked is None:
        try:
            _checked = (
                all(_signature_matches(n, r, k) for n, (r, k) in ENTRY_POINTS.items())
                and _encoding_matches()
            )
        except (AttributeError, TypeError, ValueError, iroh_ffi.InternalError):
            _checked = False
    return _checked
