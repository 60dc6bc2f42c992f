"""Pure routing decisions: candidate choice, context fit, overflow detection, body fields."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.network.proxy.routing import (
    RoutingFields,
    RoutingSnapshot,
    Target,
    choose_candidates,
    extract_routing_fields,
    is_context_overflow_400,
    order_by_context_fit,
    required_context,
    snapshot_for_path,
)
from mesh_llm.protocol import PeerId


def local(model: str, port: int, ctx: int | None = None) -> Target:
    return Target(
        model=model, key=f"local:{port}", local_port=port, peer_id=None, context_length=ctx
    )


def peer(model: str, peer_id: str, ctx: int | None = None) -> Target:
    return Target(
        model=model,
        key=f"peer:{peer_id}",
        local_port=None,
        peer_id=PeerId(peer_id.encode()),
        context_length=ctx,
    )


# -- candidates ------------------------------------------------------------------------


def test_known_model_gets_its_targets_in_order() -> None:
    a1, a2, b1 = local("a", 1), peer("a", "p1"), local("b", 2)
    snapshot = RoutingSnapshot({"a": [a1, a2], "b": [b1]}, serving=True)
    assert choose_candidates(snapshot, "a", 10, None) == ("a", [a1, a2])


@pytest.mark.parametrize("model", [None, "", "auto", "no-such-model"])
def test_serving_node_falls_back_to_local_targets_first(model: str | None) -> None:
    remote_a, local_b, remote_b = peer("a", "p1"), local("b", 2), peer("b", "p2")
    snapshot = RoutingSnapshot({"a": [remote_a], "b": [remote_b, local_b]}, serving=True)
    answering, candidates = choose_candidates(snapshot, model, 10, None)
    assert answering == "b"
    assert candidates == [local_b, remote_a, remote_b]


def test_passive_node_falls_back_to_any_target_in_snapshot_order() -> None:
    remote_a, remote_b = peer("a", "p1"), peer("b", "p2")
    snapshot = RoutingSnapshot({"a": [remote_a], "b": [remote_b]}, serving=False)
    assert choose_candidates(snapshot, "unknown", 10, None) == ("a", [remote_a, remote_b])


def test_known_name_without_targets_falls_back() -> None:
    b1 = peer("b", "p2")
    snapshot = RoutingSnapshot({"a": [], "b": [b1]}, serving=False)
    assert choose_candidates(snapshot, "a", 10, None) == ("b", [b1])


def test_nothing_to_route_to() -> None:
    assert choose_candidates(RoutingSnapshot({}, serving=False), "m", 10, None) == ("m", [])
    assert choose_candidates(RoutingSnapshot({"a": []}, serving=True), None, 1, 1) == (None, [])


# -- context fit -------------------------------------------------------------------------


def test_required_context_formula() -> None:
    assert required_context(0, None) == 256
    assert required_context(1, None) == 257
    assert required_context(8, 100) == 2 + 100 + 256
    assert required_context(9, 100) == 3 + 100 + 256


def test_fitting_first_then_unknown_and_too_small_dropped() -> None:
    small, unknown, big = local("a", 1, 512), local("a", 2), local("a", 3, 8192)
    assert order_by_context_fit([small, unknown, big], 1000) == [big, unknown]


def test_too_small_kept_when_nothing_else_remains() -> None:
    small1, small2 = local("a", 1, 512), local("a", 2, 256)
    assert order_by_context_fit([small1, small2], 1000) == [small1, small2]


def test_choose_applies_context_fit_with_max_tokens() -> None:
    small, big = local("a", 1, 1024), local("a", 2, 4096)
    snapshot = RoutingSnapshot({"a": [small, big]}, serving=True)
    assert choose_candidates(snapshot, "a", 400, 100)[1] == [small, big]
    assert choose_candidates(snapshot, "a", 400, 900)[1] == [big]


def test_fallback_answering_model_follows_context_fit() -> None:
    small_a, big_b = local("a", 1, 512), local("b", 2, 32768)
    snapshot = RoutingSnapshot({"a": [small_a], "b": [big_b]}, serving=True)
    assert choose_candidates(snapshot, None, 40_000, None) == ("b", [big_b])


# -- overflow detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"message":"the request exceeds the available context size"}}',
        b"Prompt is TOO LONG for this model",
        b"n_ctx 4096 is less than the maximum requested",
        b"too many tokens",
        b"input is longer than the context window",
    ],
)
def test_context_overflow_400(body: bytes) -> None:
    assert is_context_overflow_400(400, body)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error":"invalid json"}'),
        (400, b"context missing"),
        (400, b"limit reached"),
        (500, b"context size exceeded"),
        (400, b"x" * 5000 + b"context exceeded"),
    ],
)
def test_not_context_overflow(status: int, body: bytes) -> None:
    assert not is_context_overflow_400(status, body)


# -- body fields ---------------------------------------------------------------------------------


def test_extract_fields() -> None:
    body = json.dumps({"model": "m", "max_tokens": 50, "n_predict": 9, "user": "u1"}).encode()
    assert extract_routing_fields(body) == RoutingFields("m", 50, "u1")


def test_extract_first_max_tokens_field_and_session_id() -> None:
    body = json.dumps(
        {"max_completion_tokens": 7, "max_tokens": 50, "session_id": "s", "user": 3}
    ).encode()
    assert extract_routing_fields(body) == RoutingFields(None, 7, "s")
    body = json.dumps({"max_tokens": True, "max_output_tokens": -1, "n_predict": 12}).encode()
    assert extract_routing_fields(body).max_tokens == 12


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"model": ',
        b"\xff\xfe{",
        b'  {"model": 5}',
        b"{" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
)
def test_non_json_or_odd_bodies_give_empty_fields(body: bytes) -> None:
    fields = extract_routing_fields(body)
    assert (fields.model, fields.max_tokens, fields.session_hint) == (None, None, None)
    try:
        is_object = isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        is_object = False
    assert (fields.body_error is None) == is_object


def test_body_error_says_what_is_wrong() -> None:
    assert extract_routing_fields(b'{"model": "m"}').body_error is None
    assert "not valid JSON" in (extract_routing_fields(b'{"model": ').body_error or "")
    assert "JSON object" in (extract_routing_fields(b"[1, 2]").body_error or "")
    assert "empty" in (extract_routing_fields(b"").body_error or "")
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    assert "nested" in (extract_routing_fields(deep).body_error or "")


def test_embedding_paths_use_embedding_targets_when_there_are_any() -> None:
    chat = Target("m", "local:1", 1, None, 4096)
    emb = Target("m", "local:2", 2, None, 4096)
    plain = RoutingSnapshot({"m": [chat]}, serving=True)
    both = RoutingSnapshot({"m": [chat]}, serving=True, embedding_targets={"m": [emb]})
    assert snapshot_for_path(both, "/v1/embeddings").targets == {"m": [emb]}
    assert snapshot_for_path(both, "/embeddings").targets == {"m": [emb]}
    assert snapshot_for_path(both, "/v1/chat/completions").targets == {"m": [chat]}
    assert snapshot_for_path(plain, "/v1/embeddings") is plain


@given(st.binary(max_size=500))
def test_extract_never_raises(body: bytes) -> None:
    assert isinstance(extract_routing_fields(body), RoutingFields)


def test_recently_served_model_gets_no_fallback() -> None:
    """A model whose host just left answers 503 (no candidates), not another model."""
    from mesh_llm.network.proxy.routing import RoutingSnapshot, Target, choose_candidates

    other = Target("a", "local:1", 1, None, 4096)
    snapshot = RoutingSnapshot({"a": [other]}, serving=True, unavailable=frozenset({"b"}))
    assert choose_candidates(snapshot, "b", 10, None) == ("b", [])
    assert choose_candidates(snapshot, "never-seen", 10, None) == ("a", [other])


def test_crashed_local_model_gets_no_fallback_and_a_503_with_the_reason() -> None:
    """Issue 11: requests for a model whose llama-server keeps crashing say why."""
    from mesh_llm.network.proxy.routing import no_target_error

    other = Target("a", "local:1", 1, None, 4096)
    reason = "llama-server crashed 5 times in a row, giving up (llama-server was killed by SIGSEGV)"
    snapshot = RoutingSnapshot({"a": [other]}, serving=True, down={"b": reason})
    assert choose_candidates(snapshot, "b", 10, None) == ("b", [])
    assert no_target_error(snapshot, "b") == f"Model 'b' is not available on this node: {reason}"
    remote_b = Target("b", "peer:x", None, PeerId(b"x"), 4096)
    served_elsewhere = RoutingSnapshot(
        {"a": [other], "b": [remote_b]}, serving=True, down={"b": reason}
    )
    assert choose_candidates(served_elsewhere, "b", 10, None) == ("b", [remote_b])
