"""Completing two of llama-server's event streams for the SDKs' stream helpers.

- ``/v1/responses``: the events lack ``output_index``, ``content_index`` and
  ``sequence_number``. Iterating the raw stream works, but ``client.responses.stream()`` (which
  agent frameworks build on) indexes its response snapshot with them and fails.
  :class:`ResponsesEventFixer` fills them in, never overwriting fields that are present.
- ``/v1/messages``: when the first generated token is an incomplete UTF-8 sequence (an emoji
  split over tokens) llama-server skips ``message_start``, and Anthropic's
  ``messages.stream().get_final_message()`` then fails. :class:`MessageStartFixer` supplies one
  (only the first event is looked at).

These are the only streams the ingress rewrites: :class:`EventStreamRewriter` de-chunks the
body, hands each event to a fixer and re-chunks one event per chunk. Sans-IO: bytes in, bytes
out.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Protocol

from mesh_llm.protocol.stream_end import LAST_CHUNK, ChunkedTracker, as_chunk

__all__ = [
    "MESSAGES_PATH",
    "RESPONSES_PATHS",
    "EventFixer",
    "EventStreamRewriter",
    "MessageStartFixer",
    "ResponsesEventFixer",
    "rewriter_for",
]

RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})
MESSAGES_PATH = "/v1/messages"

_CONTENT_EVENT_PREFIXES = (
    "response.content_part.",
    "response.output_text.",
    "response.refusal.",
    "response.reasoning_text.",
)
_MAX_PENDING = 8 * 1024 * 1024
"""An event bigger than this is passed through unparsed."""


class EventFixer(Protocol):
    def rewrite(self, event: bytes) -> bytes:
        """One whole event (its lines and the blank line after) -> what to send instead."""
        ...


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

    def rewrite(self, event: bytes) -> bytes:
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
        fixed = json.dumps(self.fix(payload), separators=(",", ":"))
        lines[data_at] = b"data: " + fixed.encode()
        return b"\n".join(lines)


class MessageStartFixer:
    """Puts a ``message_start`` before the first event of a Messages stream that lacks one."""

    __slots__ = ("_model", "_started")

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False

    def rewrite(self, event: bytes) -> bytes:
        if self._started:
            return event
        self._started = True
        if event.startswith(b"event: message_start") or b'"type":"message_start"' in event:
            return event
        message: dict[str, object] = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        start = json.dumps({"type": "message_start", "message": message})
        return f"event: message_start\ndata: {start}\n\n".encode() + event


def _item_id(item: object) -> str | None:
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, str):
            return value
    return None


def rewriter_for(path: str, model: str) -> EventStreamRewriter | None:
    """The rewriter for an event stream answering ``path``, or None to relay it untouched."""
    if path in RESPONSES_PATHS:
        return EventStreamRewriter(ResponsesEventFixer())
    if path == MESSAGES_PATH:
        return EventStreamRewriter(MessageStartFixer(model))
    return None


class EventStreamRewriter:
    """Feed a chunked event-stream body; get it back re-chunked, each event passed through a
    fixer."""

    __slots__ = ("_fixer", "_payload", "_pending", "_tracker")

    def __init__(self, fixer: EventFixer) -> None:
        self._payload = bytearray()
        self._tracker = ChunkedTracker(self._payload)
        self._pending = bytearray()
        self._fixer = fixer

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
            if rewritten := self._fixer.rewrite(event):  # a fixer may drop an event
                out += as_chunk(rewritten)
        if len(self._pending) > _MAX_PENDING:
            out += as_chunk(bytes(self._pending))
            self._pending.clear()
        if self._tracker.done:
            if self._pending.strip() and (rewritten := self._fixer.rewrite(bytes(self._pending))):
                out += as_chunk(rewritten)
            self._pending.clear()
            out += LAST_CHUNK
        return bytes(out)
