"""Ending a relayed event stream cleanly when its upstream dies in the middle.

llama-server streams server-sent events in a chunked body. If it crashes mid-stream, relaying
its bytes and closing leaves the client with a truncated chunked body: HTTP libraries raise a
transport error (or, worse, some wait). :class:`ChunkedTracker` follows the chunk framing of
the relayed bytes (sizes only: payloads are skipped, never copied or decoded) so that, at a
chunk boundary, the ingress can append one error event in the dialect of the API and the final
chunk. Each SDK then raises its own typed error with a message that says what happened.
"""

from __future__ import annotations

import enum
import json

__all__ = ["LAST_CHUNK", "ChunkedTracker", "as_chunk", "stream_error_tail"]

_MAX_LINE = 4096
"""A chunk-size or trailer line longer than this is not HTTP/1.1 chunking we understand."""


class _State(enum.Enum):
    SIZE = enum.auto()
    DATA = enum.auto()
    DATA_END = enum.auto()
    TRAILER = enum.auto()
    DONE = enum.auto()
    LOST = enum.auto()


class ChunkedTracker:
    """Where a chunked body stands after the bytes fed so far (sans-IO).

    With a ``sink``, chunk payloads are appended to it (de-chunking, for the one stream the
    ingress rewrites); without, they are only counted.
    """

    __slots__ = ("_line", "_remaining", "_sink", "_state")

    def __init__(self, sink: bytearray | None = None) -> None:
        self._state = _State.SIZE
        self._remaining = 0
        self._line = b""
        self._sink = sink

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been seen."""
        return self._state is _State.DONE

    @property
    def at_boundary(self) -> bool:
        """The bytes so far end exactly between two chunks: a new chunk may follow."""
        return self._state is _State.SIZE and not self._line

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        if self._state is _State.SIZE and not self._line and self._sink is None:
            i = _skip_whole_chunks(data)
            if i == n:
                return
        while i < n:
            state = self._state
            if state is _State.DATA or state is _State.DATA_END:
                take = min(self._remaining, n - i)
                if self._sink is not None and state is _State.DATA:
                    self._sink += data[i : i + take]
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    if state is _State.DATA:
                        self._state, self._remaining = _State.DATA_END, 2
                    else:
                        self._state = _State.SIZE
            elif state is _State.SIZE or state is _State.TRAILER:
                end = data.find(b"\n", i)
                if end < 0:
                    self._line += data[i:]
                    if len(self._line) > _MAX_LINE:
                        self._state = _State.LOST
                    return
                line, self._line = self._line + data[i:end], b""
                i = end + 1
                self._on_line(line.strip())
            else:  # DONE or LOST: nothing more to follow
                return

    def _on_line(self, line: bytes) -> None:
        if self._state is _State.TRAILER:
            if not line:
                self._state = _State.DONE
            return
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            self._state = _State.LOST
            return
        if size == 0:
            self._state = _State.TRAILER
        else:
            self._state, self._remaining = _State.DATA, size


def _skip_whole_chunks(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole, well-formed data chunks: the common case
    of a relayed event stream (one token, one chunk, one read), checked with one search and one
    parse per chunk. The general state machine takes whatever follows."""
    at, n = 0, len(data)
    while at < n:
        eol = data.find(b"\r\n", at, at + 18)
        if eol < 0:
            return at
        digits = data[at:eol]
        if not digits.isalnum():  # extensions, whitespace, signs: the general path
            return at
        try:
            size = int(digits, 16)
        except ValueError:
            return at
        end = eol + 2 + size
        if size == 0 or end + 2 > n or data[end : end + 2] != b"\r\n":
            return at
        at = end + 2
    return at


def stream_error_tail(path: str, message: str) -> bytes:
    """One error event as a chunk, then the final chunk: what ends a broken stream.

    Anthropic's Messages API has an ``error`` event; the OpenAI SDKs raise on a ``data:``
    object carrying ``error`` (chat, completions and responses streams alike).
    """
    if path.startswith("/v1/messages"):
        payload = {"type": "error", "error": {"type": "api_error", "message": message}}
        event = f"event: error\ndata: {json.dumps(payload)}\n\n"
    else:
        error = {"message": message, "type": "server_error", "code": "upstream_failed"}
        event = f"data: {json.dumps({'error': error})}\n\n"
    return as_chunk(event.encode()) + LAST_CHUNK


LAST_CHUNK = b"0\r\n\r\n"


def as_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)
