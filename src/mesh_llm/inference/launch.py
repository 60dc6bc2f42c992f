"""Pure launch planning for llama-server: context size and the argv (docs/DESIGN.md,
"llama-server flags").

Nothing here touches processes; :mod:`mesh_llm.inference.supervisor` runs what this plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PARALLEL",
    "EMBEDDING_BATCH",
    "EMBEDDING_CTX",
    "EMBEDDING_PARALLEL",
    "ENCODER_ARCHITECTURES",
    "LaunchSpec",
    "ServerFeatures",
    "choose_ctx_size",
    "is_embedding_model",
    "llama_server_argv",
]

GB = 1_000_000_000

# Free memory (capacity minus the weights this node holds) -> context size, first match wins.
CTX_TABLE: tuple[tuple[int, int], ...] = (
    (30 * GB, 65536),
    (12 * GB, 32768),
    (6 * GB, 16384),
    (3 * GB, 8192),
)
CTX_FLOOR = 4096
MIN_CTX = 512
DEFAULT_PARALLEL = 8

ENCODER_ARCHITECTURES = frozenset(
    {
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "gemma-embedding",
        "t5encoder",
    }
)
"""GGUF architectures that only make embeddings (llama.cpp ``llama-arch.cpp`` names)."""
EMBEDDING_BATCH = 2048
"""Physical batch of an embedding llama-server: the longest input it embeds, in tokens. With
``--embeddings`` llama-server needs a whole input in one micro-batch and would otherwise cap it
at 512."""
EMBEDDING_CTX = 4096
EMBEDDING_PARALLEL = 2
"""Context and slots of the embedding sidecar of a chat model (``--embeddings`` run flag)."""


def is_embedding_model(
    architecture: str, pooling_type: int | None, *, catalog_embedding: bool = False
) -> bool:
    """A dedicated embedding model: the catalog says so, the GGUF names a pooling type, or the
    architecture is an encoder. Such a model is served with ``--embeddings``."""
    return catalog_embedding or pooling_type is not None or architecture in ENCODER_ARCHITECTURES


def choose_ctx_size(
    capacity_bytes: int,
    host_weight_bytes: int,
    *,
    trained_ctx: int | None = None,
    override: int | None = None,
) -> int:
    """Context size from the free-memory table; never above the model's trained context.

    ``override`` (``--ctx-size``) wins over the table but is still capped by ``trained_ctx``:
    llama.cpp would only clamp it with a warning, and advertising a context the model cannot
    use would break the router's context-fit ordering.
    """
    if override is not None:
        ctx = override
    else:
        free = capacity_bytes - host_weight_bytes
        ctx = next((size for floor, size in CTX_TABLE if free >= floor), CTX_FLOOR)
    if trained_ctx:
        ctx = min(ctx, trained_ctx)
    return max(MIN_CTX, ctx)


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """Optional llama-server flags found in ``llama-server --help`` of the installed build."""

    flash_attn_on_off: bool = False  # "-fa on|off|auto" (newer) vs bare "-fa"
    kv_unified: bool = False
    fit: bool = False
    reasoning_format: bool = False
    jinja: bool = False
    no_webui: bool = False
    override_tensor: bool = False  # "-ot PATTERN=BUFFER_TYPE"

    @classmethod
    def from_help(cls, text: str) -> ServerFeatures:
        return cls(
            flash_attn_on_off="--flash-attn" in text and "[on|off|auto]" in text.replace(" ", ""),
            kv_unified="--kv-unified" in text,
            fit="-fit" in text or "--fit " in text,
            reasoning_format="--reasoning-format" in text,
            jinja="--jinja" in text,
            no_webui="--no-webui" in text,
            override_tensor="--override-tensor" in text,
        )


HOST_OUTPUT_OVERRIDE = r"^(output|output_norm|token_embd)\.weight$=CPU"
"""A CPU host of a split keeps the output layer. Its offloaded layers are the *last* ones, so
llama.cpp would otherwise put the output projection on the last worker, and every generated
token would bring the whole logits vector back over the mesh (vocabulary x 4 bytes: 196 KB for
SmolLM2, 500 KB for a 128k vocabulary) instead of one hidden state (embedding width x 4 bytes:
2.3 KB). The sampler needs the logits on the host anyway. (A GPU host is the split's last device
and has the output already.) The cost is the output matrix in the host's memory; with tied
embeddings (``token_embd`` reused as the output) the host holds that tensor already."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything needed to start one llama-server."""

    name: str  # model name served
    argv: tuple[str, ...]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)


def llama_server_argv(
    binary: Path,
    model_path: Path,
    *,
    port: int,
    ctx_size: int,
    gpu: bool,
    features: ServerFeatures,
    parallel: int = DEFAULT_PARALLEL,
    rpc: Sequence[str] = (),
    tensor_split: str | None = None,
    gpu_layers: int | None = None,
    chat_template_file: Path | None = None,
    embeddings: bool = False,
    pooling: str | None = None,
    batch_size: int | None = None,
    alias: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The llama-server command line.

    Bound to 127.0.0.1 only (remote access goes through the mesh). ``-ngl 99`` only with a GPU
    backend, unless ``gpu_layers`` says how many layers to offload (a CPU host of a split); such a
    host keeps the output layer (:data:`HOST_OUTPUT_OVERRIDE`).
    ``--parallel`` slots with a unified KV cache, so concurrent streams share the context
    instead of each getting ``ctx/parallel``. ``batch_size`` sets both the logical and the
    physical batch (embedding servers need an input in one micro-batch); ``pooling`` overrides
    the model's pooling type (``mean`` makes a chat model answer ``/v1/embeddings``).
    """
    argv = [
        str(binary),
        "-m", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-c", str(ctx_size),
        "--parallel", str(parallel),
    ]  # fmt: skip
    if features.kv_unified:
        argv.append("--kv-unified")
    if gpu_layers is not None:
        argv += ["-ngl", str(gpu_layers)]
        if rpc and features.override_tensor:
            argv += ["-ot", HOST_OUTPUT_OVERRIDE]
    elif gpu:
        argv += ["-ngl", "99"]
    if gpu and features.flash_attn_on_off:
        argv += ["-fa", "on"]
    if rpc:
        argv += ["--rpc", ",".join(rpc)]
        if tensor_split:
            argv += ["--tensor-split", tensor_split]
    if features.reasoning_format:
        argv += ["--reasoning-format", "deepseek"]
    if features.jinja:
        argv.append("--jinja")
    if chat_template_file is not None:
        argv += ["--chat-template-file", str(chat_template_file)]
    if embeddings:
        argv.append("--embeddings")
    if pooling is not None:
        argv += ["--pooling", pooling]
    if batch_size is not None:
        argv += ["-b", str(batch_size), "-ub", str(batch_size)]
    if alias:
        argv += ["--alias", alias]
    if features.no_webui:
        argv.append("--no-webui")
    argv += list(extra)
    return argv
