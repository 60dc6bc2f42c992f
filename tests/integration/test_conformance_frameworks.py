"""Client libraries users point at the node: ``openai`` for Node.js, LiteLLM and LangChain
(``langchain-openai``), chat plain and streamed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.integration.conformance import MODEL
from tests.integration.conformance import node as node  # the module-scoped fixture
from tests.integration.harness import MeshNode

pytestmark = pytest.mark.e2e

NODE_SDK = Path(__file__).parent / "node_sdk"
PROMPT = "Say hello in one short sentence."


def _check_usage(usage: dict[str, Any]) -> None:
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# -- openai for Node.js ------------------------------------------------------------------------


def test_node_openai_sdk(node: MeshNode) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (`node` not on PATH)")
    assert (NODE_SDK / "node_modules" / "openai").is_dir(), (
        "the Node.js SDK is not installed: run `make setup` (npm ci in tests/integration/node_sdk)"
    )
    done = subprocess.run(
        ["node", "chat.mjs", f"{node.api}/v1", MODEL],
        cwd=NODE_SDK,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["models"] == [MODEL]
    assert seen["plain"]["content"].strip()
    assert seen["plain"]["finish_reason"] in ("stop", "length")
    _check_usage(seen["plain"]["usage"])
    assert seen["stream"]["pieces"] > 1
    assert seen["stream"]["text"].strip()
    assert seen["stream"]["finish_reason"] in ("stop", "length")
    _check_usage(seen["stream"]["usage"])
    assert seen["error"] == {"name": "BadRequestError", "status": 400}


# -- LiteLLM -----------------------------------------------------------------------------------

# LiteLLM is driven in a child interpreter: importing it takes seconds, installs logging and
# leaves an event loop behind at exit, none of which belongs in the test process.
LITELLM_SCRIPT = """
import json, sys
import litellm

base, model, prompt = sys.argv[1:]
common = dict(model=f"openai/{model}", api_base=base, api_key="unused", max_tokens=16,
              temperature=0, messages=[{"role": "user", "content": prompt}])
plain = litellm.completion(**common)
chunks = list(litellm.completion(**common, stream=True, stream_options={"include_usage": True}))
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
usage = next((c.usage for c in reversed(chunks) if getattr(c, "usage", None)), None)
print(json.dumps({
    "plain": {
        "content": plain.choices[0].message.content,
        "finish_reason": plain.choices[0].finish_reason,
        "usage": plain.usage.model_dump(),
    },
    "stream": {
        "pieces": len([c for c in chunks if c.choices and c.choices[0].delta.content]),
        "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "finish_reason": finishes[-1] if finishes else None,
        "usage": usage.model_dump() if usage else None,
    },
}))
"""


def test_litellm(node: MeshNode) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    done = subprocess.run(
        [sys.executable, "-c", LITELLM_SCRIPT, f"{node.api}/v1", MODEL, PROMPT],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain"]["content"].strip()
    assert seen["plain"]["finish_reason"] in ("stop", "length")
    _check_usage(seen["plain"]["usage"])
    assert seen["stream"]["pieces"] > 1
    assert seen["stream"]["text"].strip()
    assert seen["stream"]["finish_reason"] in ("stop", "length")
    assert seen["stream"]["usage"] is not None
    _check_usage(seen["stream"]["usage"])


# -- LangChain ---------------------------------------------------------------------------------


def _chat_model(node: MeshNode) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{node.api}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=MODEL,
        max_tokens=16,  # type: ignore[call-arg]
        temperature=0,
        max_retries=0,
        timeout=120,
    )


def test_langchain_openai_plain(node: MeshNode) -> None:
    reply = _chat_model(node).invoke(PROMPT)
    assert isinstance(reply.content, str)
    assert reply.content.strip()
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.response_metadata["model_name"] == MODEL
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0


def test_langchain_openai_streamed(node: MeshNode) -> None:
    chunks = list(_chat_model(node).stream(PROMPT, stream_usage=True))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 1
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert isinstance(whole.content, str)
    assert whole.content.strip()
    assert whole.response_metadata["finish_reason"] in ("stop", "length")
    usage = whole.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
