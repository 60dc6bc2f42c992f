"""Unknown model names: answered by another model with a warning and a count, or 404 when off."""

from __future__ import annotations

import json
import logging

import pytest

from mesh_llm.network.proxy.ingress import MAX_SUBSTITUTED_NAMES
from mesh_llm.network.proxy.routing import RoutingSnapshot, Target, substituted_name
from tests.fakes.fake_upstream import echo, running
from tests.unit.network.proxy.test_ingress import (
    assert_openai_error,
    chat,
    exchange,
    parse,
    serving,
    to,
)

pytestmark = pytest.mark.timeout(60)


def _snapshot() -> RoutingSnapshot:
    target = Target("real", "local:1", 1, None, 4096)
    return RoutingSnapshot(
        targets={"real": [target]}, serving=True, unavailable=frozenset({"gone"})
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("REAL", "REAL"),
        ("real", None),
        ("gone", None),  # served recently: 503, not a substitution
        ("auto", None),
        ("", None),
        (None, None),
    ],
)
def test_what_counts_as_a_substitution(model: str | None, expected: str | None) -> None:
    assert substituted_name(_snapshot(), model) == expected


async def test_substitution_warns_once_per_name_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "mesh_llm.network.proxy.ingress")
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        for model in ("gpt-4o", "gpt-4o", "claude-3-5-haiku", "real", "auto"):
            status, headers, _ = parse(await exchange(h.port, chat(model)))
            assert (status, headers["x-mesh-llm-model"]) == (200, "real")
        assert h.ingress.substitutions_total == 3
        assert h.ingress.substitutions == {"gpt-4o": 2, "claude-3-5-haiku": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "no node serves model 'gpt-4o': answering with 'real' instead (said once per name; "
        "run with --no-model-substitution to answer 404 model_not_found)",
        "no node serves model 'claude-3-5-haiku': answering with 'real' instead (said once per "
        "name; run with --no-model-substitution to answer 404 model_not_found)",
    ]


async def test_the_name_table_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "mesh_llm.network.proxy.ingress")
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        for i in range(MAX_SUBSTITUTED_NAMES + 5):
            await exchange(h.port, chat(f"invented-{i}"))
        assert h.ingress.substitutions_total == MAX_SUBSTITUTED_NAMES + 5
        assert len(h.ingress.substitutions) == MAX_SUBSTITUTED_NAMES
    said = [r for r in caplog.records if r.getMessage().startswith("no node serves model")]
    assert len(said) == MAX_SUBSTITUTED_NAMES


async def test_substitution_off_answers_404_model_not_found() -> None:
    async with (
        running(echo()) as up,
        serving({"real": [to("real", up)]}, model_substitution=False) as h,  # type: ignore[arg-type]
    ):
        message = assert_openai_error(
            await exchange(h.port, chat("gpt-4o")), 404, "invalid_request_error", "model_not_found"
        )
        assert message == (
            "The model 'gpt-4o' does not exist in this mesh (model substitution is off); "
            "served: real"
        )
        for model in ("real", "auto", ""):  # served, or asking for any model: still routed
            status, headers, _ = parse(await exchange(h.port, chat(model)))
            assert (status, headers["x-mesh-llm-model"]) == (200, "real")
        assert h.ingress.substitutions_total == 0
        assert len(up.requests) == 3  # the 404 never reached the upstream


async def test_substitution_off_speaks_anthropic_on_messages() -> None:
    body = json.dumps({"model": "claude-3-5-haiku", "max_tokens": 8, "messages": []})
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    async with (
        running(echo()) as up,
        serving({"real": [to("real", up)]}, model_substitution=False) as h,  # type: ignore[arg-type]
    ):
        status, _, payload = parse(await exchange(h.port, request))
    assert status == 404
    error = json.loads(payload)
    assert error["type"] == "error"
    assert error["error"]["type"] == "not_found_error"
    assert "'claude-3-5-haiku' does not exist" in error["error"]["message"]
