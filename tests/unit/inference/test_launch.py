import re
from pathlib import Path

import pytest

from mesh_llm.inference import (
    ServerFeatures,
    choose_ctx_size,
    is_embedding_model,
    llama_server_argv,
)

GB = 1_000_000_000


@pytest.mark.parametrize(
    ("free_gb", "ctx"),
    [
        (40, 65536),
        (30, 65536),
        (29.9, 32768),
        (12, 32768),
        (6, 16384),
        (3, 8192),
        (2.9, 4096),
        (0, 4096),
    ],
)
def test_ctx_table(free_gb: float, ctx: int) -> None:
    assert choose_ctx_size(int(free_gb * GB) + GB, GB) == ctx


def test_ctx_never_exceeds_trained_context() -> None:
    assert choose_ctx_size(100 * GB, GB, trained_ctx=8192) == 8192


def test_ctx_override_wins_but_is_capped() -> None:
    assert choose_ctx_size(100 * GB, GB, override=2048) == 2048
    assert choose_ctx_size(100 * GB, GB, override=100_000, trained_ctx=8192) == 8192


def test_argv_cpu_binds_loopback_without_ngl() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=5000, ctx_size=4096, gpu=False,
        features=ServerFeatures(kv_unified=True), parallel=8,
    )  # fmt: skip
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5000"
    assert argv[argv.index("--parallel") + 1] == "8"
    assert "--kv-unified" in argv
    assert "-ngl" not in argv


def test_argv_gpu_and_split() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=True,
        features=ServerFeatures(flash_attn_on_off=True),
        rpc=["127.0.0.1:7001", "127.0.0.1:7002"], tensor_split="0.25,0.25,0.50",
    )  # fmt: skip
    assert argv[argv.index("-ngl") + 1] == "99"
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:7001,127.0.0.1:7002"
    assert argv[argv.index("--tensor-split") + 1] == "0.25,0.25,0.50"


def test_features_from_help() -> None:
    text = "  -fa, --flash-attn [on|off|auto]  set\n  --kv-unified  x\n  --jinja\n  --no-webui"
    f = ServerFeatures.from_help(text)
    assert f.flash_attn_on_off
    assert f.kv_unified
    assert f.jinja
    assert f.no_webui
    assert not ServerFeatures.from_help("nothing").kv_unified


def test_argv_chat_template_and_no_embeddings_by_default() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=False,
        features=ServerFeatures(jinja=True), chat_template_file=Path("/t/tools.jinja"),
    )  # fmt: skip
    assert argv[argv.index("--chat-template-file") + 1] == "/t/tools.jinja"
    assert "--jinja" in argv
    for flag in ("--embeddings", "--pooling", "-ub", "-b"):
        assert flag not in argv


def test_argv_embedding_sidecar() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=False,
        features=ServerFeatures(), embeddings=True, pooling="mean", batch_size=2048,
    )  # fmt: skip
    assert "--embeddings" in argv
    assert argv[argv.index("--pooling") + 1] == "mean"
    assert argv[argv.index("-b") + 1] == "2048"
    assert argv[argv.index("-ub") + 1] == "2048"


@pytest.mark.parametrize(
    ("arch", "pooling", "catalog", "expected"),
    [
        ("llama", None, False, False),
        ("qwen3", None, False, False),
        ("llama", None, True, True),
        ("qwen3", 3, False, True),
        ("bert", None, False, True),
        ("nomic-bert", None, False, True),
        ("jina-bert-v2", None, False, True),
    ],
)
def test_is_embedding_model(arch: str, pooling: int | None, catalog: bool, expected: bool) -> None:
    assert is_embedding_model(arch, pooling, catalog_embedding=catalog) is expected


def test_cpu_split_host_offloads_the_workers_share_of_layers() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=False,
        features=ServerFeatures(), rpc=["127.0.0.1:7001"], tensor_split="0.50,0.50", gpu_layers=16,
    )  # fmt: skip
    assert argv[argv.index("-ngl") + 1] == "16"
    assert "-ot" not in argv  # a build without --override-tensor


def test_cpu_split_host_keeps_the_output_layer() -> None:
    argv = llama_server_argv(
        Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=False,
        features=ServerFeatures(override_tensor=True), rpc=["127.0.0.1:7001"],
        tensor_split="0.50,0.50", gpu_layers=16,
    )  # fmt: skip
    pattern, _, buffer = argv[argv.index("-ot") + 1].rpartition("=")
    assert buffer == "CPU"
    for name in ("output.weight", "output_norm.weight", "token_embd.weight"):
        assert re.search(pattern, name)
    for name in ("blk.29.ffn_down.weight", "blk.0.attn_output.weight", "output.bias"):
        assert not re.search(pattern, name)


def test_solo_and_gpu_hosts_keep_llama_cpp_placement() -> None:
    for gpu_layers, rpc in ((None, ["127.0.0.1:7001"]), (None, []), (16, [])):
        argv = llama_server_argv(
            Path("/b/llama-server"), Path("/m.gguf"), port=1, ctx_size=4096, gpu=True,
            features=ServerFeatures(override_tensor=True), rpc=rpc, gpu_layers=gpu_layers,
        )  # fmt: skip
        assert "-ot" not in argv


def test_cpu_host_offload_counts() -> None:
    from mesh_llm.inference import cpu_host_offload

    assert cpu_host_offload(30, "0.50,0.50") == 16  # 31 offloadable layers, half of them
    assert cpu_host_offload(30, "0.25,0.25,0.50") == 16
    assert cpu_host_offload(30, "0.67,0.33") == 21
    assert cpu_host_offload(30, None) == 31
