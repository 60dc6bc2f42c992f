"""End to end: an unknown model name is substituted visibly, or refused with 404 when told to."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.integration.harness import MeshNode, running

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


def _client(node: MeshNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(node: MeshNode, model: str) -> openai.types.chat.ChatCompletion:
    raw = _client(node).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert raw.headers["x-mesh-llm-model"] == MODEL
    return raw.parse()


def test_substitution_warns_once_and_is_counted(tmp_path: Path) -> None:
    with running(MeshNode("solo", tmp_path / "solo", ["--model", MODEL])) as node:
        node.wait_models({MODEL}, timeout=180)
        for model in ("gpt-4o", "gpt-4o", MODEL, "auto"):
            assert _ask(node, model).choices[0].message.content is not None
        status = node.status()["model_substitution"]
        assert status == {"enabled": True, "substituted_total": 2, "by_model": {"gpt-4o": 2}}
    log = node.log_path.read_text(errors="replace")
    warned = [line for line in log.splitlines() if "no node serves model 'gpt-4o'" in line]
    assert len(warned) == 1, node.log_tail()
    assert "WARNING" in warned[0]
    assert f"answering with '{MODEL}' instead" in warned[0]


def test_substitution_off_is_404_model_not_found(tmp_path: Path) -> None:
    args = ["--model", MODEL, "--no-model-substitution"]
    with running(MeshNode("strict", tmp_path / "strict", args)) as node:
        node.wait_models({MODEL}, timeout=180)
        with pytest.raises(openai.NotFoundError) as excinfo:
            _client(node).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert excinfo.value.code == "model_not_found"
        assert "'gpt-4o' does not exist" in excinfo.value.message
        assert MODEL in excinfo.value.message
        assert _ask(node, MODEL).choices  # served names and "auto" still answer
        assert _ask(node, "auto").choices
        body = json.dumps({"model": "claude-3-5-haiku", "max_tokens": 4, "messages": []})
        request = urllib.request.Request(
            f"{node.api}/v1/messages", data=body.encode(), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(request, timeout=30)
        assert http_error.value.code == 404
        payload = json.loads(http_error.value.read())
        http_error.value.close()
        assert payload["error"]["type"] == "not_found_error"
        assert node.status()["model_substitution"]["enabled"] is False
