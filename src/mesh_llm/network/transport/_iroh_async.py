"""A cheaper driver for the iroh bindings' async calls (every stream read and write).

uniffi's generated ``_uniffi_rust_call_async`` polls the Rust future with a continuation callback
that always goes through ``loop.call_soon_threadsafe``. Most stream operations are ready at the
first poll (data already buffered, send credit available), and then Rust calls the continuation
*inline*, on the event loop's own thread, during the poll: the generated code still writes the
loop's self-pipe and spends a whole loop iteration to resume the coroutine. On a small machine
that doubles the Python-side cost of each read and write (measured: a buffered 240-byte read
81 -> 40 us, a write 184 -> 98 us of CPU).

:func:`install` replaces the module-level driver (the generated methods look it up at each call)
with one that takes an inline continuation directly and keeps ``call_soon_threadsafe`` for
continuations that come from Rust's threads. The FFI protocol is unchanged: poll until READY,
then complete and free exactly once, also when the awaiting task is cancelled.

Continuations that come from Rust's threads are ctypes callbacks on threads Python did not start;
the driver keeps a Python thread state for each such thread instead of letting CPython create and
destroy one around every call (:func:`_keep_thread_state`). :func:`poll_blocking` is one poll
for a thread without a loop, used by :func:`run_blocking` and by :mod:`.iroh_direct`.

It is installed only if the bindings carry the expected generated driver (checked by source).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from iroh import iroh_ffi

__all__ = [
    "BlockingCallCancelledError",
    "BlockingCallTimeoutError",
    "install",
    "is_installed",
    "needs_install",
    "poll_blocking",
    "run_blocking",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

_MARKER: Final = "_mesh_llm_inline_driver"
_NEEDED: Final = (
    "_uniffi_rust_call_async",
    "_uniffi_rust_call_with_error",
    "_uniffi_get_event_loop",
    "_UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK",
    "_UNIFFI_RUST_FUTURE_POLL_READY",
)


class _Continuation:
    """Where one poll's answer lands: set inline during the poll, or later via the loop (or, for
    a caller on a thread without a loop, by releasing its lock)."""

    __slots__ = ("code", "future", "lock", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, thread: int) -> None:
        self.loop = loop
        self.thread = thread
        self.code: int | None = None
        self.future: asyncio.Future[int] | None = None
        self.lock: threading.Lock | None = None

    def deliver(self, code: int) -> None:
        self.code = code
        future = self.future
        if future is not None and not future.done():
            future.set_result(code)


_pending: dict[int, _Continuation] = {}
_handles = itertools.count(1)


_kept_thread_states: set[int] = set()
_MAX_KEPT: Final = 64


def _keep_thread_state(thread: int) -> None:
    """Keep a Python thread state for one of Rust's threads.

    A ctypes callback on a thread Python did not start gets a thread state created before and
    destroyed after each call (``PyGILState_Ensure``/``Release``), which measured ~50 us of CPU
    per continuation on this project's VM. One extra ``PyGILState_Ensure`` on the thread's first
    callback, never released, keeps the state for the thread's life (a few tokio workers; at
    most :data:`_MAX_KEPT` threads, since a state outlives its thread by a few kilobytes).
    """
    active = getattr(threading, "_active", None)
    if (
        active is None
        or thread in active
        or thread in _kept_thread_states
        or len(_kept_thread_states) >= _MAX_KEPT
    ):
        return
    _kept_thread_states.add(thread)
    ctypes.pythonapi.PyGILState_Ensure()


def _continue(handle: int, code: int) -> None:
    continuation = _pending.pop(handle, None)
    if continuation is None:
        return
    thread = threading.get_ident()
    if thread == continuation.thread:
        continuation.deliver(code)  # inline, during the poll
        return
    if thread not in _kept_thread_states:
        _keep_thread_state(thread)
    loop = continuation.loop
    if loop is None:  # a blocking caller waits on its lock
        continuation.code = code
        assert continuation.lock is not None
        continuation.lock.release()
        return
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for the answer
        loop.call_soon_threadsafe(continuation.deliver, code)


_callback: Any = None  # the ctypes callback object; created on install, kept alive here


async def _call_async(
    rust_future: Any,
    ffi_poll: Callable[..., Any],
    ffi_complete: Callable[..., Any],
    ffi_free: Callable[..., Any],
    lift_func: Callable[[Any], Any],
    error_ffi_converter: Any,
) -> Any:
    ready = iroh_ffi._UNIFFI_RUST_FUTURE_POLL_READY
    try:
        loop = asyncio._get_running_loop() or iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP
        thread = threading.get_ident()
        while True:
            if loop is None:
                code = poll_blocking(
                    rust_future,
                    ffi_poll,
                    getattr(_local, "cancel", None),
                    getattr(_local, "deadline", None),
                )
            else:
                continuation = _Continuation(loop, thread)
                handle = next(_handles)
                _pending[handle] = continuation
                ffi_poll(rust_future, _callback, handle)
                inline = continuation.code
                if inline is None:
                    continuation.future = loop.create_future()
                    code = await continuation.future
                else:
                    code = inline
            if code == ready:
                break
        return lift_func(
            iroh_ffi._uniffi_rust_call_with_error(error_ffi_converter, ffi_complete, rust_future)
        )
    finally:
        ffi_free(rust_future)


setattr(_call_async, _MARKER, True)

_CANCEL_POLL_S = 0.2
_local = threading.local()


class BlockingCallCancelledError(Exception):
    """A blocking call was given up because its cancel event was set."""


class BlockingCallTimeoutError(Exception):
    """A blocking call was given up because its deadline passed."""


def _wait(
    continuation: _Continuation,
    handle: int,
    cancel: threading.Event | None,
    deadline: float | None,
) -> int:
    """Block this (loop-less) thread until Rust answers, the cancel event is set, or the
    ``time.monotonic()`` deadline passes."""
    lock = continuation.lock
    assert lock is not None
    while True:
        wait = _CANCEL_POLL_S
        if deadline is not None:
            wait = min(wait, max(deadline - time.monotonic(), 0.0))
        if lock.acquire(timeout=wait):
            break
        if cancel is not None and cancel.is_set():
            _pending.pop(handle, None)
            raise BlockingCallCancelledError
        if deadline is not None and time.monotonic() >= deadline:
            _pending.pop(handle, None)
            raise BlockingCallTimeoutError
    code = continuation.code
    assert code is not None
    return code


def poll_blocking(
    rust_future: int,
    ffi_poll: Callable[..., Any],
    cancel: threading.Event | None,
    deadline: float | None = None,
) -> int:
    """Poll a Rust future once from a thread without an event loop and return the code Rust
    answers with (READY or MAYBE_READY), waiting for it if it does not come during the poll.
    Setting ``cancel`` gives up with :class:`BlockingCallCancelledError`, passing the
    ``time.monotonic()`` ``deadline`` with :class:`BlockingCallTimeoutError`; the caller still
    frees the future, which cancels it. A future is only advanced by a poll, so one given up
    while waiting has taken nothing (a read consumed no bytes)."""
    continuation = _Continuation(None, threading.get_ident())
    continuation.lock = lock = threading.Lock()
    lock.acquire()
    handle = next(_handles)
    _pending[handle] = continuation
    ffi_poll(rust_future, _callback, handle)
    code = continuation.code
    if code is None:
        code = _wait(continuation, handle, cancel, deadline)
    return code


def run_blocking(
    coroutine: Coroutine[Any, Any, T],
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> T:
    """Run one call of the bindings (``stream.read(n)``, ``send.write_all(data)``...) to the end on
    this thread, which must have no event loop: the driver then waits on a lock instead of an
    asyncio future. Setting ``cancel`` gives the call up (within :data:`_CANCEL_POLL_S`) with
    :class:`BlockingCallCancelledError`, a ``timeout`` (seconds) with
    :class:`BlockingCallTimeoutError`; the Rust future is freed, which cancels it.
    """
    if not is_installed():
        coroutine.close()
        raise RuntimeError("the inline driver is not installed")
    _local.cancel = cancel
    _local.deadline = None if timeout is None else time.monotonic() + timeout
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        _local.cancel = None
        _local.deadline = None
    coroutine.close()
    raise RuntimeError("the call awaited something other than a Rust future")


def is_installed() -> bool:
    driver = getattr(iroh_ffi, "_uniffi_rust_call_async", None)
    return driver is not None and getattr(driver, _MARKER, False) is True


def needs_install() -> bool:
    """True if the bindings carry the generated driver this module knows how to replace."""
    if is_installed() or not all(hasattr(iroh_ffi, name) for name in _NEEDED):
        return False
    try:
        source = inspect.getsource(iroh_ffi._uniffi_rust_call_async)
    except (OSError, TypeError):
        return False
    return all(
        part in source
        for part in ("ffi_poll(", "_uniffi_continuation_callback", "ffi_free(rust_future)")
    )


def install() -> bool:
    """Install the inline-continuation driver if the bindings need it; True if it did now."""
    global _callback
    if not needs_install():
        return False
    _callback = iroh_ffi._UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK(_continue)
    iroh_ffi._uniffi_rust_call_async = _call_async
    log.debug("iroh bindings: async calls resume inline when Rust answers during the poll")
    return True
