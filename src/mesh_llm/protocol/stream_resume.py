"""Resuming a streamed chat completion on another server when its server dies mid-stream. Sans-IO.

When the node generating a streamed ``/v1/chat/completions`` dies, the ingress has already sent the
client part of the answer. Instead of ending the stream with an error event, it asks another
server of the same model to *continue* the answer: the original request with the text streamed so
far appended as an assistant message (llama-server's assistant prefill,
``continue_final_message``), and ``max_tokens`` reduced by the tokens already sent. The continued
stream is spliced into the client's: its role-only first event is dropped, ``id``/``created``/
``model`` are the original stream's, and the final ``usage`` counts the whole answer. With greedy
sampling the joined stream equals an uninterrupted one (``docs/DESIGN.md`` "Streams that survive
their server").

Continuing is unsafe, and the stream ends with the usual error event saying why, when: the
request asks for several choices (``n`` > 1) or log probabilities; a tool call or reasoning text
was being streamed; the stream already finished; the streamed text was not recorded in full.

The relayed bytes are recorded as they pass (a bounded append, no parsing); they are decoded only
when the stream breaks (:func:`read_partial_stream`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from mesh_llm.protocol.stream_end import ChunkedTracker

__all__ = [
    "CHAT_PATH",
    "MAX_RECORDED_BYTES",
    "ContinuationFixer",
    "PartialStream",
    "StreamRecorder",
    "continuation_body",
    "read_partial_stream",
    "request_blocks_resume",
]

CHAT_PATH: Final = "/v1/chat/completions"
MAX_RECORDED_BYTES: Final = 8 * 1024 * 1024
"""A stream longer than this (about 50k tokens of deltas) is not resumable: its record stops."""
_TOKEN_FIELDS: Final = ("max_tokens", "max_completion_tokens", "n_predict")


class StreamRecorder:
    """Keeps the chunked body bytes relayed so far, up to :data:`MAX_RECORDED_BYTES`."""

    __slots__ = ("data", "overflowed")

    def __init__(self) -> None:
        self.data = bytearray()
        self.overflowed = False

    def __call__(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        if len(self.data) + len(chunk) > MAX_RECORDED_BYTES:
            self.overflowed = True
            self.data.clear()
            return
        self.data += chunk


@dataclass(frozen=True, slots=True)
class PartialStream:
    """What a broken chat stream had sent."""

    text: str
    """The assistant content streamed so far."""
    tokens: int
    """Content events sent (llama-server streams one token per event)."""
    stream_id: str | None
    created: int | None
    model: str | None
    unsafe: str | None
    """Why this stream must not be continued (None: it may)."""


def request_blocks_resume(body: dict[str, Any]) -> str | None:
    """Why a request's stream could never be continued elsewhere (None: it could)."""
    if body.get("stream") is not True:
        return "not a stream"
    n = body.get("n", 1)
    if n not in (None, 1):
        return "the request asks for several choices (n > 1)"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "the request asks for log probabilities"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "the request has no messages"
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return "the request already continues an assistant message"
    return None


def _events(payload: bytes) -> list[dict[str, Any]]:
    """The JSON ``data:`` events of an SSE payload (``[DONE]`` and comments skipped)."""
    out: list[dict[str, Any]] = []
    for block in payload.split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if not data or data == b"[DONE]":
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
    return out


def read_partial_stream(recorder: StreamRecorder) -> PartialStream:
    """Decode what a broken stream sent (its chunked body, as recorded)."""
    if recorder.overflowed:
        return PartialStream("", 0, None, None, None, "the stream was too long to record")
    payload = bytearray()
    ChunkedTracker(payload).feed(bytes(recorder.data))
    # Only whole events count: a torn last event was never seen whole by the client either.
    cut = payload.rfind(b"\n\n")
    events = _events(bytes(payload[: cut + 2])) if cut >= 0 else []
    text: list[str] = []
    tokens = 0
    unsafe: str | None = None
    stream_id = created = model = None
    for event in events:
        if "error" in event:
            unsafe = "the server reported an error"
        stream_id = stream_id or _str(event.get("id"))
        created = created or _int(event.get("created"))
        model = model or _str(event.get("model"))
        if event.get("usage"):
            unsafe = "the stream had finished"
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                unsafe = "the stream has several choices"
            if choice.get("finish_reason"):
                unsafe = "the stream had finished"
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                continue
            if delta.get("tool_calls"):
                unsafe = "a tool call was being streamed"
            if delta.get("reasoning_content"):
                unsafe = "reasoning text was being streamed"
            content = delta.get("content")
            if isinstance(content, str) and content:
                text.append(content)
                tokens += 1
    return PartialStream("".join(text), tokens, stream_id, created, model, unsafe)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def continuation_body(body: dict[str, Any], partial: PartialStream) -> bytes | None:
    """The request that continues ``partial``; None when no token budget is left."""
    out = dict(body)
    out["messages"] = [*body["messages"], {"role": "assistant", "content": partial.text}]
    out["continue_final_message"] = True
    out["add_generation_prompt"] = False
    for field in _TOKEN_FIELDS:
        limit = body.get(field)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            left = limit - partial.tokens
            if left <= 0:
                return None
            out[field] = left
    return json.dumps(out).encode()


class ContinuationFixer:
    """Rewrites the continued stream's events so the client sees one stream (an ``EventFixer``).

    Drops events that carry nothing new (the role-only first event), gives every event the
    original's ``id``, ``created`` and ``model``, and makes the final ``usage`` count the tokens
    streamed before the break as completion tokens, not prompt tokens.
    """

    __slots__ = ("_partial",)

    def __init__(self, partial: PartialStream) -> None:
        self._partial = partial

    def rewrite(self, event: bytes) -> bytes:
        lines = event.rstrip(b"\n").split(b"\n")
        data_lines = [line for line in lines if line.startswith(b"data:")]
        if len(data_lines) != 1:
            return event
        data = data_lines[0][5:].strip()
        if data == b"[DONE]":
            return event
        try:
            payload = json.loads(data)
        except ValueError:
            return event
        if not isinstance(payload, dict):
            return event
        if _role_only(payload):
            return b""
        partial = self._partial
        for key, value in (
            ("id", partial.stream_id),
            ("created", partial.created),
            ("model", partial.model),
        ):
            if value is not None and key in payload:
                payload[key] = value
        usage = payload.get("usage")
        if isinstance(usage, dict):
            _fix_usage(usage, partial.tokens)
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _role_only(payload: dict[str, Any]) -> bool:
    choices = payload.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or payload.get("usage"):
        return False
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("finish_reason"):
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return all(key == "role" or value in (None, "") for key, value in delta.items())


def _fix_usage(usage: dict[str, Any], tokens: int) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        usage["prompt_tokens"] = max(0, prompt - tokens)
        usage["completion_tokens"] = completion + tokens
