"""How this node launches the models it was given (pure).

:func:`plan_launches` takes what is known of each model and of this node, frozen, and decides for
each model: solo or split, context size, chat template, whether it is a dedicated embedding
model, and whether it gets an embedding sidecar. The node turns the decisions into runners.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import ConfigError
from mesh_llm.inference import (
    EMBEDDING_CTX,
    FIT_FACTOR,
    choose_ctx_size,
    fits_solo,
    is_embedding_model,
)
from mesh_llm.runtime.states import RunnerMode
from mesh_llm.system import GB

__all__ = ["LaunchInputs", "ModelFacts", "ModelLaunch", "plan_launches"]


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What launch planning needs to know of one resolved model."""

    name: str
    file_size: int
    trained_ctx: int | None = None
    architecture: str = ""
    pooling_type: int | None = None
    catalog_embedding: bool = False
    """The catalog entry says it is an embedding model."""
    bundled_template: Path | None = None
    """The chat template the catalog entry ships, if any."""


@dataclass(frozen=True, slots=True)
class LaunchInputs:
    capacity: int
    """Bytes of model this node offers."""
    models: tuple[ModelFacts, ...]
    """In ``--gguf`` then ``--model`` order; only the first may be split."""
    gpu: bool = False
    force_split: bool = False
    """``--split``: split the first model even if it fits."""
    ctx_override: int | None = None
    embeddings: bool = False
    """``--embeddings``: an embedding sidecar per chat model served whole."""
    chat_template_file: Path | None = None
    """``--chat-template-file``: wins over every catalog template."""


@dataclass(frozen=True, slots=True)
class ModelLaunch:
    name: str
    mode: RunnerMode
    ctx_size: int
    embedding: bool
    """A dedicated embedding model: served with ``--embeddings``, no chat template."""
    chat_template: Path | None
    sidecar_ctx: int | None
    """The context of this chat model's embedding sidecar; None: no sidecar."""


def plan_launches(inputs: LaunchInputs) -> tuple[ModelLaunch, ...]:
    """One launch decision per model; :class:`ConfigError` when a model cannot be served.

    Models are placed in order against the node's capacity: each must fit in what the previous
    ones left (x :data:`FIT_FACTOR`), except the first, which may instead be split across the
    mesh (and is, with ``--split``). On a GPU an embedding sidecar is a second copy and must fit
    too; on a CPU both processes share the page cache.
    """
    capacity = inputs.capacity
    used = 0
    launches: list[ModelLaunch] = []
    for index, model in enumerate(inputs.models):
        size = model.file_size
        solo = fits_solo(capacity - used, size) and not (index == 0 and inputs.force_split)
        if not solo and index > 0:
            raise ConfigError(
                f"model {model.name} needs {size * FIT_FACTOR / GB:.2f} GB but this node "
                f"offers {(capacity - used) / GB:.2f} GB; only the first --model can be "
                "split across the mesh"
            )
        used += size if solo else min(capacity, size)
        ctx = choose_ctx_size(
            capacity, used, trained_ctx=model.trained_ctx, override=inputs.ctx_override
        )
        embedding = is_embedding_model(
            model.architecture, model.pooling_type, catalog_embedding=model.catalog_embedding
        )
        template = None if embedding else (inputs.chat_template_file or model.bundled_template)
        sidecar_ctx = None
        if inputs.embeddings and solo and not embedding:
            if inputs.gpu and not fits_solo(capacity - used, size):
                raise ConfigError(
                    f"--embeddings runs a second copy of {model.name} for embeddings, and it "
                    f"does not fit in the {(capacity - used) / GB:.2f} GB left"
                )
            if inputs.gpu:
                used += size
            sidecar_ctx = min(ctx, EMBEDDING_CTX)
        mode = RunnerMode.SOLO if solo else RunnerMode.SPLIT
        launches.append(ModelLaunch(model.name, mode, ctx, embedding, template, sidecar_ctx))
    return tuple(launches)
