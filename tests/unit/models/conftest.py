"""Fixtures: an isolated model store and hub cache; tiny GGUF files written with GGUFWriter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest


@dataclass(frozen=True)
class Dirs:
    root: Path
    models: Path
    hf_cache: Path


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dirs:
    """Point the model store, the hub cache and HOME at empty directories under tmp_path."""
    models = tmp_path / "models"
    hf_cache = tmp_path / "hf" / "hub"
    models.mkdir()
    hf_cache.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MESH_LLM_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return Dirs(root=tmp_path, models=models, hf_cache=hf_cache)


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str | None = "Tiny Llama",
    block_count: int = 2,
    context_length: int = 2048,
    embedding_length: int = 64,
    head_count: int = 4,
    experts: tuple[int, int] | None = None,
    file_type: int | None = int(gguf.LlamaFileType.MOSTLY_Q4_1),
    chat_template: str | None = "{{ messages }}",
    tokens: int = 8,
    split: tuple[int, int, int] | None = None,
    tensors: int = 2,
    seed: int = 0,
    pooling_type: int | None = None,
) -> Path:
    """Write a small, structurally real GGUF. ``split`` is (index 0-based, count, total tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    if split is None or split[0] == 0:
        if name is not None:
            writer.add_name(name)
        writer.add_block_count(block_count)
        writer.add_context_length(context_length)
        writer.add_embedding_length(embedding_length)
        writer.add_head_count(head_count)
        if experts is not None:
            writer.add_expert_count(experts[0])
            writer.add_expert_used_count(experts[1])
        if file_type is not None:
            writer.add_file_type(file_type)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        writer.add_token_list([f"tok{i}" for i in range(tokens)])
        if pooling_type is not None:
            writer.add_uint32(f"{arch}.pooling_type", pooling_type)
    if split is not None:
        writer.add_uint16("split.no", split[0])
        writer.add_uint16("split.count", split[1])
        writer.add_int32("split.tensors.count", split[2])
    rng = np.random.default_rng(seed)
    base = 0 if split is None else split[0] * tensors
    for i in range(tensors):
        writer.add_tensor(f"blk.{base + i}.weight", rng.random((4, 8), dtype=np.float32))
    writer.add_tensor(f"blk.{base}.norm", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_split(directory: Path, stem: str, count: int, *, tensors: int = 2) -> list[Path]:
    """``<stem>-0000k-of-0000N.gguf`` for k = 1..count; the first carries the metadata."""
    total = count * (tensors + 1)
    return [
        write_gguf(
            directory / f"{stem}-{k + 1:05d}-of-{count:05d}.gguf",
            split=(k, count, total),
            tensors=tensors,
            seed=k,
        )
        for k in range(count)
    ]


def fake_hf_cache_file(
    cache: Path, repo_id: str, filename: str, *, commit: str = "0" * 40, **gguf_kwargs: object
) -> Path:
    """Lay out ``models--org--repo/{blobs,snapshots/<commit>,refs/main}`` as huggingface_hub does,
    with the snapshot file a symlink into blobs/."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / f"blob-{filename.replace('/', '_')}"
    write_gguf(blob, **gguf_kwargs)  # type: ignore[arg-type]
    link = repo_dir / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(blob)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return link
