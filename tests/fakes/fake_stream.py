"""An in-process pair of streams with the shape of ``network.BiStream`` (for tunnel tests).

``stream_pair()`` returns two ends; what one writes the other reads. ``finish`` ends the writer's
direction cleanly (the peer reads ``b""``), ``reset`` abandons it (the peer's reads fail with
``TransportError``), ``stop`` makes the peer's writes fail. Writes wait while more than
``capacity`` bytes are unread (backpressure), like QUIC flow control.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from mesh_llm.errors import TransportError


class _Pipe:
    def __init__(self, capacity: int) -> None:
        self.buf = bytearray()
        self.capacity = capacity
        self.eof = False
        self.reset = False
        self.stopped = False
        self.changed = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()

    async def wait(self) -> None:
        self.changed.clear()
        await self.changed.wait()


class PipeStream:
    def __init__(self, incoming: _Pipe, outgoing: _Pipe) -> None:
        self._in = incoming
        self._out = outgoing
        self.written = 0
        self.read_bytes = 0

    async def write(self, data: bytes) -> None:
        out = self._out
        if out.eof or out.reset:
            raise TransportError("stream write: already finished")
        while len(out.buf) >= out.capacity and not out.stopped:
            await out.wait()
        if out.stopped:
            raise TransportError("stream write: stopped by peer")
        out.buf += data
        self.written += len(data)
        out.notify()

    async def read(self, n: int) -> bytes:
        pipe = self._in
        while not pipe.buf:
            if pipe.reset:
                raise TransportError("stream read: reset by peer")
            if pipe.eof:
                return b""
            await pipe.wait()
        data = bytes(pipe.buf[:n])
        del pipe.buf[:n]
        self.read_bytes += len(data)
        pipe.notify()
        return data

    async def read_exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            data = await self.read(n - got)
            if not data:
                raise TransportError("stream read_exact: early end of stream")
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    async def finish(self) -> None:
        self._out.eof = True
        self._out.notify()

    async def reset(self, code: int = 0) -> None:
        self._out.reset = True
        self._out.notify()

    async def stop(self, code: int = 0) -> None:
        self._in.stopped = True
        self._in.notify()

    async def aclose(self) -> None:
        await self.finish()
        await self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def stream_pair(capacity: int = 1 << 20) -> tuple[PipeStream, PipeStream]:
    a_to_b, b_to_a = _Pipe(capacity), _Pipe(capacity)
    return PipeStream(b_to_a, a_to_b), PipeStream(a_to_b, b_to_a)
