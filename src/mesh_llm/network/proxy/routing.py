"""Pure routing decisions for the :9337 ingress (docs/DESIGN.md, "Routing pipeline").

Everything here is a function over a frozen :class:`RoutingSnapshot` and request fields;
the ingress applies the result. The auto router, affinity and the planning pipeline are
separate concerns and not part of this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from mesh_llm.protocol import PeerId

BYTES_PER_TOKEN = 4
"""Rough request-size-to-tokens ratio used for the context-fit estimate."""
CONTEXT_HEADROOM_TOKENS = 256
MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "n_predict")
OVERFLOW_SCAN_BYTES = 4096

_CONTEXT_WORDS = ("context", "n_ctx", "ctx", "prompt", "token", "slot", "window")
_LIMIT_WORDS = (
    "exceed",
    "overflow",
    "too long",
    "too many",
    "greater than",
    "longer than",
    "limit",
    "maximum",
)
EMBEDDING_PATHS = frozenset({"/v1/embeddings", "/embeddings"})
JSON_API_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/v1/responses",
        "/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        *EMBEDDING_PATHS,
    }
)
"""POST paths of the OpenAI and Anthropic APIs: their bodies must be JSON objects."""
_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request for ``model`` can go."""

    model: str
    key: str
    """Stable id: ``local:<port>`` or ``peer:<hex id>``."""
    local_port: int | None
    """Set for a llama-server on 127.0.0.1 of this node."""
    peer_id: PeerId | None
    """Set for a model served by another mesh node."""
    context_length: int | None


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """What can serve what, at one moment.

    ``targets`` maps model name to candidates in preference order; its iteration order
    decides which model is "first" for requests naming no known model. ``serving`` is true
    when this node serves at least one model locally.
    """

    targets: Mapping[str, Sequence[Target]]
    serving: bool
    unavailable: frozenset[str] = frozenset()
    """Models the mesh served recently but nobody serves now: a request naming one gets 503
    instead of the unknown-model fallback (asking for a model that just went away must not
    silently answer with another one)."""
    embedding_targets: Mapping[str, Sequence[Target]] = field(default_factory=dict)
    """Model name -> llama-servers started with ``--embeddings``, for the embedding paths. A chat
    model's own targets do not answer ``/v1/embeddings`` (llama-server says 501) unless the node
    runs an embedding sidecar for it; when this is empty, embedding requests use ``targets``."""
    down: Mapping[str, str] = field(default_factory=dict)
    """Models this node runs that cannot answer now (llama-server restarting after a crash, or
    given up), with why. With no other target, a request naming one gets a 503 carrying that
    reason, never another model's answer."""
    no_mesh_reason: str | None = None
    """Set while this node was told to join a mesh (``--join``) and is in none: why. A request
    nothing can answer is then refused with this reason instead of blaming the model."""


@dataclass(frozen=True, slots=True)
class RoutingFields:
    """What routing reads from a request body."""

    model: str | None
    max_tokens: int | None
    session_hint: str | None
    body_error: str | None = None
    """Why the body is not a JSON object (None when it is)."""


def extract_routing_fields(body: bytes) -> RoutingFields:
    """Read ``model``, the first max-tokens field and the session hint (``user``, else
    ``session_id``) from a JSON object body. Anything that is not a JSON object yields
    empty fields and a ``body_error``; this never raises."""
    if not _JSON_OBJECT_START.match(body):
        return RoutingFields(None, None, None, _not_an_object(body))
    try:
        parsed: object = json.loads(body)
    except RecursionError:
        return RoutingFields(None, None, None, "the request body is nested too deeply")
    except ValueError as exc:
        return RoutingFields(None, None, None, f"the request body is not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        return RoutingFields(None, None, None, "the request body must be a JSON object")
    model = parsed.get("model")
    return RoutingFields(
        model=model if isinstance(model, str) else None,
        max_tokens=_first_max_tokens(parsed),
        session_hint=_first_string(parsed, "user", "session_id"),
    )


def _not_an_object(body: bytes) -> str:
    if not body.strip():
        return "the request body is empty; expected a JSON object"
    if len(body) > OVERFLOW_SCAN_BYTES:
        return "the request body is not a JSON object"
    try:
        json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"the request body is not valid JSON: {exc}"
    return "the request body must be a JSON object"


def _first_max_tokens(obj: dict[str, object]) -> int | None:
    for name in MAX_TOKENS_FIELDS:
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _first_string(obj: dict[str, object], *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def required_context(body_len: int, max_tokens: int | None) -> int:
    """Tokens a request needs: ceil(body/4) + requested completion + headroom."""
    return -(-body_len // BYTES_PER_TOKEN) + (max_tokens or 0) + CONTEXT_HEADROOM_TOKENS


def order_by_context_fit(candidates: Sequence[Target], required: int) -> list[Target]:
    """Targets known to fit first, then those of unknown context; targets known to be too
    small are dropped unless that would leave nothing. Order is otherwise kept."""
    fits = [t for t in candidates if t.context_length is not None and t.context_length >= required]
    unknown = [t for t in candidates if t.context_length is None]
    ordered = fits + unknown
    return ordered if ordered else list(candidates)


def snapshot_for_path(snapshot: RoutingSnapshot, path: str) -> RoutingSnapshot:
    """The snapshot that routes a request for ``path``: embedding paths use the embedding
    targets when there are any, everything else the (chat) targets."""
    if path in EMBEDDING_PATHS and snapshot.embedding_targets:
        return replace(snapshot, targets=snapshot.embedding_targets)
    return snapshot


def choose_candidates(
    snapshot: RoutingSnapshot, model: str | None, body_len: int, max_tokens: int | None
) -> tuple[str | None, list[Target]]:
    """The answering model and the targets to try, in order.

    A model with targets gets exactly those; a model in ``snapshot.unavailable`` or
    ``snapshot.down`` gets none.
    Any other name (missing, ``auto``, unknown)
    falls back to every target of every model: on a serving node local targets first,
    otherwise in snapshot order; the answering model is then the first candidate's. With
    nothing to try, the result is ``(model, [])``.
    """
    required = required_context(body_len, max_tokens)
    known = snapshot.targets.get(model) if model is not None else None
    if known:
        return model, order_by_context_fit(known, required)
    if model is not None and (model in snapshot.unavailable or model in snapshot.down):
        return model, []
    everything = [t for targets in snapshot.targets.values() for t in targets]
    if snapshot.serving:
        everything.sort(key=lambda t: t.local_port is None)
    if not everything:
        return model, []
    candidates = order_by_context_fit(everything, required)
    return candidates[0].model, candidates


AUTO_MODEL = "auto"
"""The model name that asks the mesh to pick (as do a missing or empty name)."""


def substituted_name(snapshot: RoutingSnapshot, model: str | None) -> str | None:
    """``model`` when routing it means answering with another model, else None.

    That is a name the snapshot neither serves nor lists as unavailable. A missing or empty
    name and ``auto`` ask for any model: they are routed the same way (:func:`choose_candidates`)
    but are not substitutions. Whether a substitution is allowed is the ingress's setting.
    """
    if not model or model == AUTO_MODEL:
        return None
    if snapshot.targets.get(model) or model in snapshot.unavailable:
        return None
    return model


def model_not_found_error(snapshot: RoutingSnapshot, model: str) -> str:
    """The message of the 404 for an unknown model while substitution is off."""
    served = sorted(snapshot.targets)
    listed = ", ".join(served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
    return (
        f"The model '{model}' does not exist in this mesh (model substitution is off); "
        f"served: {listed or 'none'}"
    )


def no_target_error(snapshot: RoutingSnapshot, model: str | None, why: str | None = None) -> str:
    """The message of the 503 for a request for ``model`` that no target could answer; ``why``
    adds what else was tried (a cold start that no node has room for). Being in no mesh comes
    first: it is the cause the user can act on."""
    if snapshot.no_mesh_reason is not None:
        return f"not connected to any mesh: {snapshot.no_mesh_reason}"
    if model and model in snapshot.down:
        return f"Model '{model}' is not available on this node: {snapshot.down[model]}"
    base = (
        f"No inference server available for model '{model}'"
        if model
        else ("No inference server available")
    )
    return f"{base}: {why}" if why else base


def is_context_overflow_400(status: int, body_prefix: bytes) -> bool:
    """A 400 whose body (first 4 KiB) names a context word and a limit word."""
    if status != 400:
        return False
    text = body_prefix[:OVERFLOW_SCAN_BYTES].decode("utf-8", "replace").lower()
    return any(w in text for w in _CONTEXT_WORDS) and any(w in text for w in _LIMIT_WORDS)
