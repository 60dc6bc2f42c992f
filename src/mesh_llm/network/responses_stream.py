"""Completing llama-server's Responses API event stream for the OpenAI SDKs.

llama-server's ``/v1/responses`` stream omits ``output_index``, ``content_index`` and
``sequence_number`` from its events. Iterating the raw stream works, but the SDKs' stream
helpers (``client.responses.stream()`` in Python, which agent frameworks build on) index the
response snapshot with them and fail. This is the one stream the ingress rewrites: it
de-chunks the body, fills in the missing fields (never overwriting ones that are present) and
re-chunks one event per chunk. Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

import json
from typing import Any

from mesh_llm.network.stream_end import LAST_CHUNK, ChunkedTracker, as_chunk

__all__ = ["RESPONSES_PATHS", "ResponsesEventFixer", "ResponsesStreamRewriter"]

RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})

_CONTENT_EVENT_PREFIXES = (
    "response.content_part.",
    "response.output_text.",
    "response.refusal.",
    "response.reasoning_text.",
)
_MAX_PENDING = 8 * 1024 * 1024
"""An event bigger than this is passed through unparsed."""


class ResponsesEventFixer:
    """Adds the index fields of one stream's events, in order."""

    __slots__ = ("_items", "_parts", "_sequence")

    def __init__(self) -> None:
        self._sequence = 0
        self._items: dict[str, int] = {}
        self._parts: dict[str, int] = {}

    def fix(self, event: dict[str, Any]) -> dict[str, Any]:
        kind = event.get("type")
        if not isinstance(kind, str):
            return event
        if kind == "response.output_item.added":
            index = len(self._items)
            item_id = _item_id(event.get("item"))
            if item_id is not None:
                self._items.setdefault(item_id, index)
            event.setdefault("output_index", index)
        elif kind == "response.output_item.done":
            done_id = _item_id(event.get("item"))
            last = max(len(self._items) - 1, 0)
            event.setdefault("output_index", self._items.get(done_id, last) if done_id else last)
        else:
            item_id = event.get("item_id")
            if isinstance(item_id, str) and item_id in self._items:
                event.setdefault("output_index", self._items[item_id])
                if kind == "response.content_part.added":
                    parts = self._parts.get(item_id, 0)
                    event.setdefault("content_index", parts)
                    self._parts[item_id] = parts + 1
                elif kind.startswith(_CONTENT_EVENT_PREFIXES):
                    event.setdefault("content_index", max(self._parts.get(item_id, 1) - 1, 0))
        event.setdefault("sequence_number", self._sequence)
        self._sequence += 1
        return event


def _item_id(item: object) -> str | None:
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, str):
            return value
    return None


class ResponsesStreamRewriter:
    """Feed the chunked body of a ``/v1/responses`` event stream; get the rewritten chunks."""

    __slots__ = ("_fixer", "_payload", "_pending", "_tracker")

    def __init__(self) -> None:
        self._payload = bytearray()
        self._tracker = ChunkedTracker(self._payload)
        self._pending = bytearray()
        self._fixer = ResponsesEventFixer()

    @property
    def done(self) -> bool:
        """The upstream's last chunk has been seen (and passed on)."""
        return self._tracker.done

    def feed(self, data: bytes) -> bytes:
        self._tracker.feed(data)
        self._pending += self._payload
        self._payload.clear()
        out = bytearray()
        while (end := self._pending.find(b"\n\n")) >= 0:
            event = bytes(self._pending[: end + 2])
            del self._pending[: end + 2]
            out += as_chunk(self._rewrite(event))
        if len(self._pending) > _MAX_PENDING:
            out += as_chunk(bytes(self._pending))
            self._pending.clear()
        if self._tracker.done:
            if self._pending.strip():
                out += as_chunk(self._rewrite(bytes(self._pending)))
            self._pending.clear()
            out += LAST_CHUNK
        return bytes(out)

    def _rewrite(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data_at = next((i for i, line in enumerate(lines) if line.startswith(b"data:")), None)
        if data_at is None:
            return event
        try:
            payload = json.loads(lines[data_at][len(b"data:") :])
        except (ValueError, RecursionError):
            return event
        if not isinstance(payload, dict):
            return event
        fixed = json.dumps(self._fixer.fix(payload), separators=(",", ":"))
        lines[data_at] = b"data: " + fixed.encode()
        return b"\n".join(lines)
