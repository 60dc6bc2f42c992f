import json
import os
from pathlib import Path

import pytest

from mesh_llm.errors import BackendNotFoundError
from mesh_llm.inference import Backend, locate_backend
from mesh_llm.inference.backend import build_dir, parse_device_listing


def make_bins(directory: Path, rpc_name: str = "ggml-rpc-server") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("llama-server", rpc_name):
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MESH_LLM_BIN_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


def test_bin_dir_wins(tmp_path: Path) -> None:
    make_bins(tmp_path / "mine", "rpc-server")
    make_bins(build_dir(Backend.CPU) / "bin")
    found = locate_backend(tmp_path / "mine")
    assert found.source == "bin-dir"
    assert found.rpc_server.name == "rpc-server"


def test_the_environment_is_the_clis_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MESH_LLM_BIN_DIR`` reaches here as ``bin_dir`` (tests/unit/cli/test_environment.py)."""
    make_bins(tmp_path / "env")
    monkeypatch.setenv("MESH_LLM_BIN_DIR", str(tmp_path / "env"))
    with pytest.raises(BackendNotFoundError):
        locate_backend()
    assert locate_backend(tmp_path / "env").source == "bin-dir"


def test_bin_dir_without_binaries_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendNotFoundError, match="--bin-dir"):
        locate_backend(tmp_path / "empty")


def test_path_before_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bins(tmp_path / "onpath", "rpc-server")
    make_bins(build_dir(Backend.CPU) / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "onpath"))
    assert locate_backend().source == "path"


def test_cache_with_build_identity() -> None:
    bin_dir = build_dir(Backend.CPU) / "bin"
    make_bins(bin_dir)
    (bin_dir / "build-info.json").write_text(json.dumps({"commit": "0c1e570", "backend": "cpu"}))
    found = locate_backend(backend=Backend.CPU)
    assert found.source == "cache"
    assert found.build_id == "0c1e570-cpu"


def test_nothing_found_names_what_was_searched() -> None:
    with pytest.raises(BackendNotFoundError, match="backend install"):
        locate_backend(backend=Backend.CPU)


def test_non_executable_is_ignored(tmp_path: Path) -> None:
    make_bins(tmp_path / "x")
    os.chmod(tmp_path / "x" / "llama-server", 0o644)
    with pytest.raises(BackendNotFoundError):
        locate_backend(tmp_path / "x")


def test_device_listing() -> None:
    text = (
        "error: unknown device: __mesh_llm_probe_invalid__\n"
        "available devices:\n"
        "  CPU: AMD EPYC (24000 MiB, 24000 MiB free)\n"
        "  CUDA0: NVIDIA H100 (81000 MiB, 80000 MiB free)\n"
    )
    assert parse_device_listing(text) == [
        ("CPU", "AMD EPYC (24000 MiB, 24000 MiB free)"),
        ("CUDA0", "NVIDIA H100 (81000 MiB, 80000 MiB free)"),
    ]
    assert parse_device_listing("nothing here") == []
