"""Relay loops in C for the relay threads (``native_relay.c``): no Python per relayed chunk.

A relay thread moves each streamed token from one end to the other: a socket to a socket (a
local llama-server to the client), a socket into an iroh stream (a host node answering a
tunnelled request) or an iroh stream into a socket (the client's node). In Python the interpreter
was about a third of both mesh-llm processes' CPU per tunnelled token (docs/DESIGN.md), and on a
machine whose cores llama-server keeps busy that CPU is taken from inference. The C loops make
the same socket calls and the same uniffi calls as the transport's direct calls (clone the object
handle, start the Rust future, poll it with a continuation that signals a condition variable,
complete it, free it), through the entry points :func:`~mesh_llm.network.transport.ffi_streams`
hands out. The caller's ``observe`` (chunk framing, byte counts) gets the relayed bytes in order
but in batches, at most 100 ms or 32 KiB apart and always before a loop returns: a few calls into
Python per second instead of one per token.

The library is built from the packaged source with the system C compiler (``cc``, warnings on:
:data:`CFLAGS`) into ``cache_dir()/native`` under a name derived from the source's hash, by
``mesh-llm backend install`` or in the background at node start (:func:`prepare`). Without a
compiler, or switched off (``prepare(enabled=False)``: a node's configuration, which the CLI
takes from ``MESH_LLM_NATIVE_RELAY=0``), the relays stay in Python; so do the stream loops
while the iroh fast path is off or the bindings do not match: their entry points' C types
(checked by the transport) and uniffi's ``RustBuffer``/``RustCallStatus`` layout, which the
library reports as it was compiled and which must equal the bindings' ctypes definitions.
:func:`available`, :func:`streams_available` and :func:`status` say which, and why.

A client that stops reading is not handled here: the socket loop returns what the socket did not
take (:meth:`NativeRelay.stream_to_socket`) and the caller drains the stream meanwhile.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from mesh_llm.network.transport import LAYOUT_KEYS, FfiStreams, ffi_streams
from mesh_llm.system import cache_dir

__all__ = [
    "NativeRelay",
    "RelayCancelledError",
    "RelaySinkError",
    "RelaySourceError",
    "available",
    "build",
    "compile_command",
    "disable",
    "library_path",
    "load",
    "prepare",
    "status",
    "streams_available",
    "streams_unavailable_reason",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

SOURCE: Final = Path(__file__).with_name("native_relay.c")
_ABI: Final = 2
_BUILD_TIMEOUT_S: Final = 120
CFLAGS: Final = ("-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra")

# Result codes of the C loops.
_END, _SOURCE_FAILED, _SINK_FAILED, _CANCELLED, _STALLED, _OBSERVE_FAILED = range(6)


class RelaySourceError(Exception):
    """Reading the relay's source failed."""


class RelaySinkError(Exception):
    """Writing to the relay's sink failed."""


class RelayCancelledError(Exception):
    """The relay was cancelled while waiting for the iroh stream."""


_OBSERVE: Final = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)

_API_FIELDS: Final = (  # the C library's Api struct, in order
    ("clone_send", "uniffi_iroh_ffi_fn_clone_sendstream"),
    ("clone_recv", "uniffi_iroh_ffi_fn_clone_recvstream"),
    ("buffer_alloc", "ffi_iroh_ffi_rustbuffer_alloc"),
    ("buffer_free", "ffi_iroh_ffi_rustbuffer_free"),
    ("write_all", "uniffi_iroh_ffi_fn_method_sendstream_write_all"),
    ("read", "uniffi_iroh_ffi_fn_method_recvstream_read"),
    ("poll_void", "ffi_iroh_ffi_rust_future_poll_void"),
    ("complete_void", "ffi_iroh_ffi_rust_future_complete_void"),
    ("free_void", "ffi_iroh_ffi_rust_future_free_void"),
    ("poll_buffer", "ffi_iroh_ffi_rust_future_poll_rust_buffer"),
    ("complete_buffer", "ffi_iroh_ffi_rust_future_complete_rust_buffer"),
    ("free_buffer", "ffi_iroh_ffi_rust_future_free_rust_buffer"),
)


class _Api(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name, _ in _API_FIELDS]


_lock = threading.Lock()
_lib: Any = None
_ffi: FfiStreams | None = None  # set once the stream loops are bound
_failure: str | None = None
_streams_failure: str | None = None


def library_path() -> Path:
    """Where the library built from the current source lives."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return cache_dir() / "native" / f"relay-{digest}-{platform.machine()}.so"


def build() -> Path:
    """Compile the library if it is not in the cache yet; its path. Raises OSError with the
    compiler's message if it cannot be built."""
    target = library_path()
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    command = compile_command(compiler, partial)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{compiler} took more than {_BUILD_TIMEOUT_S} s") from exc
    finally:
        partial.unlink(missing_ok=True)
    for old in target.parent.glob(f"relay-*-{platform.machine()}.so"):
        if old != target:  # built from an earlier source (a running node keeps its mapping)
            old.unlink(missing_ok=True)
    return target


def compile_command(compiler: str, output: Path, *, werror: bool = False) -> list[str]:
    """The compiler's argv that builds the library into ``output`` (``-Werror`` in tests)."""
    flags = [*CFLAGS, "-Werror"] if werror else list(CFLAGS)
    return [compiler, *flags, "-o", str(output), str(SOURCE)]


def load(*, build_if_missing: bool = True) -> bool:
    """Load the library (building it first if allowed); True if the socket loop is available.
    Idempotent and thread-safe; a failure is logged once and remembered."""
    global _lib, _failure
    with _lock:
        if _lib is not None or _failure is not None:
            return _lib is not None
        path = library_path()
        if not build_if_missing and not path.exists():
            return False  # not built yet: a later load may build it
        try:
            if build_if_missing:
                build()
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            if lib.native_relay_abi() != _ABI:
                raise OSError("the library's ABI version does not match")
        except OSError as exc:
            _failure = str(exc)
            log.info("native relay unavailable, relays stay in Python: %s", exc)
            return False
        _lib = lib
        log.debug("native relay loaded from %s", path)
        return True


def disable(reason: str) -> None:
    """Keep the relays in Python for the rest of the process (unless already loaded);
    ``reason`` is what :func:`unavailable_reason` and :func:`status` say."""
    global _failure
    with _lock:
        if _lib is None and _failure is None:
            _failure = reason


def prepare(*, enabled: bool = True) -> None:
    """Load the library now if it is built, else build and load it in a background thread
    (the relays stay in Python until then). ``enabled=False``: :func:`disable` it instead."""
    if not enabled:
        disable("switched off by the configuration (MESH_LLM_NATIVE_RELAY=0)")
        return
    if load(build_if_missing=False):
        return
    threading.Thread(target=load, name="mesh-llm-native-relay-build", daemon=True).start()


def available() -> bool:
    """The socket-to-socket loop is loaded."""
    return _lib is not None


def streams_available() -> bool:
    """The loops that read or write iroh streams are loaded and bound to the bindings (done
    on the first call once the transport offers its stream calls, if the layouts agree)."""
    global _ffi, _streams_failure
    if _lib is None:
        return False
    if _ffi is not None:
        return True
    with _lock:
        if _ffi is None and _streams_failure is None and (offered := ffi_streams()) is not None:
            mismatch = layout_mismatch(compiled_layout(_lib), offered.layout)
            if mismatch is not None:
                _streams_failure = f"uniffi struct layout differs: {mismatch}"
                log.warning("native relay: stream loops stay in Python: %s", _streams_failure)
            else:
                _init_streams(_lib, offered)
                _ffi = offered
    return _ffi is not None


def unavailable_reason() -> str | None:
    return _failure


def streams_unavailable_reason() -> str | None:
    """Why the stream loops are not in C (None while they are, or the library is not loaded)."""
    if _lib is None or streams_available():
        return None
    return _streams_failure or "the iroh fast path is off or does not match the bindings"


def status() -> dict[str, object]:
    """For ``/api/status``: whether relays run in C, and why not."""
    return {
        "native": available(),
        "native_streams": streams_available(),
        "reason": None if available() else (_failure or "not built yet"),
        "streams_reason": streams_unavailable_reason(),
    }


def compiled_layout(lib: Any) -> dict[str, int]:
    """uniffi's struct layout as the loaded library was compiled (:data:`LAYOUT_KEYS`)."""
    values = (ctypes.c_uint64 * len(LAYOUT_KEYS))()
    count = lib.native_relay_layout(values, len(LAYOUT_KEYS))
    if count != len(LAYOUT_KEYS):
        return {"fields": count}
    return dict(zip(LAYOUT_KEYS, values, strict=True))


def layout_mismatch(compiled: dict[str, int], bindings: Mapping[str, int]) -> str | None:
    """What differs between the C library's layout and the bindings' (None: nothing)."""
    differing = [
        f"{key} C {compiled.get(key)} != bindings {bindings.get(key)}"
        for key in (*LAYOUT_KEYS, *compiled)
        if compiled.get(key) != bindings.get(key)
    ]
    return "; ".join(dict.fromkeys(differing)) or None


def _declare(lib: Any) -> None:
    vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    status = ctypes.c_void_p
    lib.native_relay_abi.argtypes, lib.native_relay_abi.restype = (), i
    lib.native_relay_layout.argtypes = (ctypes.POINTER(ctypes.c_uint64), sz)
    lib.native_relay_layout.restype = sz
    lib.native_relay_init.argtypes, lib.native_relay_init.restype = (ctypes.POINTER(_Api),), None
    lib.native_relay_new.argtypes, lib.native_relay_new.restype = (), vp
    lib.native_relay_free.argtypes, lib.native_relay_free.restype = (vp,), None
    lib.native_relay_cancel.argtypes, lib.native_relay_cancel.restype = (vp,), None
    lib.native_relay_errno.argtypes, lib.native_relay_errno.restype = (vp,), i
    lib.native_relay_socket_to_socket.argtypes = (vp, i, i, sz, _OBSERVE)
    lib.native_relay_socket_to_socket.restype = i
    lib.native_relay_socket_to_stream.argtypes = (vp, i, ctypes.c_uint64, sz, _OBSERVE, status)
    lib.native_relay_socket_to_stream.restype = i
    lib.native_relay_stream_to_socket.argtypes = (
        vp,
        ctypes.c_uint64,
        ctypes.c_uint32,
        i,
        _OBSERVE,
        status,
        vp,
        ctypes.POINTER(sz),
    )
    lib.native_relay_stream_to_socket.restype = i


def _init_streams(lib: Any, ffi: FfiStreams) -> None:
    """Hand the bindings' entry points to the library (the transport has checked them: same
    entry points, C types and encoding of ``bytes``)."""
    api = _Api()
    for field, name in _API_FIELDS:
        setattr(api, field, ffi.entry_points[name])
    lib.native_relay_init(ctypes.byref(api))


class NativeRelay:
    """One relay's state in C; each method runs one loop on the calling (relay) thread, which
    must not hold the event loop. :meth:`cancel` may be called from any thread until
    :meth:`close`."""

    __slots__ = ("_busy", "_closed", "_guard", "_ptr", "_tail")

    def __init__(self) -> None:
        if _lib is None:
            raise RuntimeError("the native relay is not loaded")
        ptr = _lib.native_relay_new()
        if not ptr:
            raise MemoryError("native_relay_new")
        self._ptr: int = ptr
        self._guard = threading.Lock()
        self._closed = False
        self._busy = False
        self._tail: ctypes.Array[ctypes.c_char] | None = None

    def cancel(self) -> None:
        """Make a wait for the iroh stream return (the caller also shuts the sockets down)."""
        with self._guard:
            if not self._closed:
                _lib.native_relay_cancel(self._ptr)

    def close(self) -> None:
        """Free the C state, at once or, while a loop still runs, when it returns."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            if not self._busy:
                _lib.native_relay_free(self._ptr)

    def _run(self, loop: Any, *args: Any) -> tuple[int, int]:
        """Run one C loop on this relay: its result and the relay's errno."""
        with self._guard:
            if self._closed or self._busy:
                raise RuntimeError("the relay is closed or already running a loop")
            self._busy = True
        try:
            result = loop(self._ptr, *args)
            return result, _lib.native_relay_errno(self._ptr)
        finally:
            with self._guard:
                self._busy = False
                if self._closed:
                    _lib.native_relay_free(self._ptr)

    def socket_to_socket(
        self,
        source: socket.socket,
        sink: socket.socket,
        size: int,
        observe: Callable[[bytes], None] | None,
    ) -> None:
        """Relay until ``source`` ends: ``recv`` of up to ``size`` bytes, a blocking
        ``send`` of all of it (both sockets blocking, with the kernel's timeouts), ``observe``."""
        callback, errors = _callback(observe)
        result, code = self._run(
            _lib.native_relay_socket_to_socket, source.fileno(), sink.fileno(), size, callback
        )
        _raise_for(result, code, errors, None, None, "socket")

    def socket_to_stream(
        self,
        source: socket.socket,
        send: int,
        size: int,
        observe: Callable[[bytes], None] | None,
    ) -> None:
        """Relay until ``source`` ends, each chunk as one ``write_all`` on the iroh stream whose
        send half's handle is ``send`` (``BiStream.send_handle``)."""
        ffi = _require_streams()
        callback, errors = _callback(observe)
        status = ffi.call_status()
        result, code = self._run(
            _lib.native_relay_socket_to_stream,
            source.fileno(),
            send,
            size,
            callback,
            ctypes.addressof(status),
        )
        _raise_for(result, code, errors, ffi, status, "stream write")

    def stream_to_socket(
        self,
        recv: int,
        limit: int,
        sink: socket.socket,
        observe: Callable[[bytes], None] | None,
    ) -> bytes | None:
        """Relay reads of up to ``limit`` bytes from the iroh stream whose receive half's handle is
        ``recv`` (``BiStream.recv_handle``) into ``sink``
        (non-blocking sends) until the stream ends (None), or until ``sink`` does not take a
        whole chunk: then the bytes it did not take are returned and the caller takes over
        until the client catches up."""
        ffi = _require_streams()
        tail = self._tail
        if tail is None or len(tail) < limit:
            tail = self._tail = ctypes.create_string_buffer(limit)
        callback, errors = _callback(observe)
        status = ffi.call_status()
        tail_len = ctypes.c_size_t(0)
        result, code = self._run(
            _lib.native_relay_stream_to_socket,
            recv,
            limit,
            sink.fileno(),
            callback,
            ctypes.addressof(status),
            ctypes.addressof(tail),
            ctypes.byref(tail_len),
        )
        if result == _STALLED:
            return tail.raw[: tail_len.value]
        _raise_for(result, code, errors, ffi, status, "stream read")
        return None


def _raise_for(
    result: int,
    code: int,
    errors: list[BaseException],
    ffi: FfiStreams | None,
    status: Any,
    what: str,
) -> None:
    """Raise what a loop's result means (nothing at the end of the source)."""
    if result == _END:
        return
    if result == _OBSERVE_FAILED:
        raise errors[0]
    if result == _CANCELLED:
        raise RelayCancelledError("cancelled")
    failure = RelaySourceError if result == _SOURCE_FAILED else RelaySinkError
    if ffi is not None and status is not None and status.code:
        raise failure(f"{what}: {ffi.describe(status)}")
    if code:  # EPROTO: a malformed result buffer
        raise failure(OSError(code, os.strerror(code)))
    raise failure(f"unexpected relay result {result}")


def _require_streams() -> FfiStreams:
    if not streams_available() or _ffi is None:
        raise RuntimeError("the native relay's stream loops are not bound to the iroh bindings")
    return _ffi


def _callback(observe: Callable[[bytes], None] | None) -> tuple[Any, list[BaseException]]:
    """The C callback for ``observe`` (NULL for none) and where its exception lands."""
    errors: list[BaseException] = []
    if observe is None:
        return _OBSERVE(), errors

    def call(address: int, size: int) -> int:
        try:
            observe(ctypes.string_at(address, size))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the relay thread
            errors.append(exc)
            return 1
        return 0

    return _OBSERVE(call), errors
