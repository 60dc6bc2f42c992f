"""A tiny stand-in for llama-server behind the ingress, for fast tests.

Each connection reads one request (head plus a Content-Length body, which is how the
ingress forwards) and then runs a *behaviour*. While a behaviour runs, the fake watches the
connection: if the proxy closes it first, :attr:`FakeUpstream.gone` is set and the
behaviour is cancelled, which is how tests prove that a client disconnect reaches the
upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Exchange:
    request: bytes
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Behaviour = Callable[[Exchange], Awaitable[None]]


class FakeUpstream:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self.connections = 0
        self.gone = asyncio.Event()
        self.finished = asyncio.Event()
        self.extra_bytes = b""
        """Bytes the proxy sent after the request (there should be none)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        finished = False
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            finished = await self._run(Exchange(request, writer), reader)
        finally:
            if finished:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(5):
                        await writer.wait_closed()
            writer.transport.abort()
            self._tasks.discard(task)

    async def _run(self, exchange: Exchange, reader: asyncio.StreamReader) -> bool:
        """Run the behaviour while watching for the proxy to go away; True if it finished."""
        work = asyncio.create_task(self.behaviour(exchange))
        try:
            while True:
                watch = asyncio.create_task(reader.read(65536))
                try:
                    await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
                if work.done():
                    if isinstance(work.exception(), ConnectionError):
                        self.gone.set()
                        return False
                    work.result()
                    self.finished.set()
                    return True
                extra = b"" if watch.cancelled() or watch.exception() else watch.result()
                if not extra:
                    self.gone.set()
                    return False
                self.extra_bytes += extra
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head + body


# -- behaviours ---------------------------------------------------------------------------


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def echo() -> Behaviour:
    """200 whose body is the exact request bytes received."""

    async def run(ex: Exchange) -> None:
        await ex.send(response(200, ex.request, "text/plain"))

    return run


def raw(data: bytes) -> Behaviour:
    """Send exactly ``data`` and close."""

    async def run(ex: Exchange) -> None:
        await ex.send(data)

    return run


def hang() -> Behaviour:
    """Never answer."""

    async def run(ex: Exchange) -> None:
        await asyncio.Event().wait()

    return run


def close_without_answer() -> Behaviour:
    async def run(ex: Exchange) -> None:
        return None

    return run


OVERFLOW_BODY = json.dumps(
    {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
        }
    }
).encode()


def overflow_400() -> Behaviour:
    return raw(response(400, OVERFLOW_BODY))


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)


def sse(
    events: list[bytes],
    *,
    delay: float = 0.0,
    gate: asyncio.Event | None = None,
) -> Behaviour:
    """Stream ``events`` as SSE ``data:`` lines in chunked encoding, ``delay`` apart.

    With ``gate``, the last event waits until the gate is set.
    """

    def chunk(payload: bytes) -> bytes:
        line = b"data: " + payload + b"\n\n"
        return f"{len(line):x}\r\n".encode() + line + b"\r\n"

    async def run(ex: Exchange) -> None:
        await ex.send(SSE_HEAD)
        for index, event in enumerate(events):
            if gate is not None and index == len(events) - 1:
                await gate.wait()
            await ex.send(chunk(event))
            if delay:
                await asyncio.sleep(delay)
        await ex.send(b"0\r\n\r\n")

    return run


@contextlib.asynccontextmanager
async def running(behaviour: Behaviour) -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream(behaviour).start()
    try:
        yield upstream
    finally:
        await upstream.close()
