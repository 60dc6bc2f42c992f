"""The launch planner: solo or split, context, template, embedding models and sidecars."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.inference import EMBEDDING_CTX
from mesh_llm.runtime.launch_plan import LaunchInputs, ModelFacts, ModelLaunch, plan_launches
from mesh_llm.runtime.states import RunnerMode
from mesh_llm.system import GB

CHAT = ModelFacts("chat", file_size=1 * GB, trained_ctx=8192, architecture="llama")
TEMPLATE = Path("/bundled/smollm2-tools.jinja")


def plan(*models: ModelFacts, capacity: int = 10 * GB, **kw: object) -> tuple[ModelLaunch, ...]:
    return plan_launches(LaunchInputs(capacity=capacity, models=models, **kw))  # type: ignore[arg-type]


def test_a_model_that_fits_runs_solo_capped_at_its_trained_context() -> None:
    (launch,) = plan(CHAT)
    assert launch == ModelLaunch("chat", RunnerMode.SOLO, 8192, False, None, None)


def test_the_first_model_too_big_is_split() -> None:
    (launch,) = plan(CHAT, capacity=GB)  # 1 GB model needs 1.1 GB
    assert launch.mode is RunnerMode.SPLIT


def test_split_flag_splits_only_the_first_model() -> None:
    other = ModelFacts("other", file_size=GB)
    first, second = plan(CHAT, other, force_split=True)
    assert (first.mode, second.mode) == (RunnerMode.SPLIT, RunnerMode.SOLO)


def test_a_later_model_that_does_not_fit_is_a_config_error() -> None:
    big = ModelFacts("big", file_size=9 * GB)
    with pytest.raises(ConfigError, match="only the first --model can be split"):
        plan(CHAT, big)


def test_ctx_override_wins_but_stays_under_the_trained_context() -> None:
    (launch,) = plan(CHAT, ctx_override=32768)
    assert launch.ctx_size == 8192
    (launch,) = plan(CHAT, ctx_override=2048)
    assert launch.ctx_size == 2048


def test_template_file_wins_over_the_catalogs() -> None:
    bundled = ModelFacts("chat", file_size=GB, bundled_template=TEMPLATE)
    assert plan(bundled)[0].chat_template == TEMPLATE
    own = Path("/mine.jinja")
    assert plan(bundled, chat_template_file=own)[0].chat_template == own


def test_embedding_models_get_no_template_and_no_sidecar() -> None:
    for facts in (
        ModelFacts("e", file_size=GB, architecture="bert"),
        ModelFacts("e", file_size=GB, pooling_type=1),
        ModelFacts("e", file_size=GB, catalog_embedding=True, bundled_template=TEMPLATE),
    ):
        (launch,) = plan(facts, embeddings=True, chat_template_file=Path("/x.jinja"))
        assert launch.embedding
        assert launch.chat_template is None
        assert launch.sidecar_ctx is None


def test_embeddings_flag_adds_a_sidecar_to_solo_chat_models() -> None:
    (launch,) = plan(CHAT, embeddings=True)
    assert launch.sidecar_ctx == min(8192, EMBEDDING_CTX)
    (split,) = plan(CHAT, capacity=GB, embeddings=True)
    assert split.sidecar_ctx is None  # a split model gets none


def test_a_gpu_sidecar_is_a_second_copy_that_must_fit() -> None:
    with pytest.raises(ConfigError, match="second copy of chat"):
        plan(CHAT, capacity=2 * GB, embeddings=True, gpu=True)
    (launch,) = plan(CHAT, capacity=2 * GB, embeddings=True)  # CPU: the page cache is shared
    assert launch.sidecar_ctx is not None


def test_a_gpu_sidecar_counts_against_later_models() -> None:
    second = ModelFacts("second", file_size=GB)
    with pytest.raises(ConfigError, match="model second needs"):
        plan(CHAT, second, capacity=3 * GB, embeddings=True, gpu=True)
    assert len(plan(CHAT, second, capacity=3 * GB, embeddings=True)) == 2
