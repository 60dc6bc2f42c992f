"""The `mesh-llm models` command module, driven through its own argparse registration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.cli.commands import models as models_cmd

from .conftest import Dirs, fake_hf_cache_file, write_gguf, write_split


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mesh-llm")
    sub = parser.add_subparsers(dest="command")
    models_cmd.add_parser(sub)
    return parser.parse_args(list(argv))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = models_cmd.run(_parse(*argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_marks_installed(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    fake_hf_cache_file(dirs.hf_cache, "unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
    code, out, err = _run(capsys, "models", "list")
    assert code == 0
    assert err == ""
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in out.splitlines()
        if line.strip()
    }
    assert lines["Qwen3-8B-Q4_K_M"].startswith("*")
    assert "5.0 GB" in lines["Qwen3-8B-Q4_K_M"]
    assert not lines["Qwen3-4B-Q4_K_M"].startswith("*")
    assert "98 MB" in lines["SmolLM2-135M-Instruct"]
    assert "[draft]" in lines["Qwen3-0.6B-Q4_K_M"]


def test_no_subcommand_lists(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models")
    assert code == 0
    assert "SmolLM2-135M-Instruct" in out


def test_installed(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "installed")
    assert code == 0
    assert "no models installed" in out
    parts = write_split(dirs.models, "Big", 2)
    code, out, _ = _run(capsys, "models", "installed")
    assert code == 0
    assert "Big" in out
    assert str(parts[0]) in out


def test_show_installed_model_with_gguf_metadata(
    dirs: Dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_gguf(
        dirs.models / "SmolLM2-135M-Instruct.Q4_1.gguf", block_count=30, experts=(8, 2)
    )
    code, out, err = _run(capsys, "models", "show", "smollm2")
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["name"] == "SmolLM2-135M-Instruct"
    assert fields["installed"] == "yes"
    assert fields["architecture"] == "llama"
    assert fields["layers"] == "30"
    assert fields["context length"] == "2048"
    assert fields["experts"] == "8 (top-2), MoE"
    assert fields["quantization"] == "Q4_1"
    assert fields["path"] == str(path)
    assert fields["tensors"] == "3"


def test_show_catalog_model_not_installed(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "show", "Qwen3-30B-A3B-Q4_K_M")
    assert code == 0
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["installed"].startswith("no")
    assert fields["catalog size"] == "17.3 GB"
    assert "128 experts, top-8, min 46 per node" in out
    assert "architecture" not in out


def test_show_non_catalog_file(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_gguf(dirs.root / "x" / "custom.gguf")
    code, out, _ = _run(capsys, "models", "show", str(path))
    assert code == 0
    assert "custom" in out
    assert "Q4_1" in out


def test_show_unknown_model(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "models", "show", "no-such-model-xyz")
    assert code == 1
    assert out == ""
    assert err.startswith("error: model 'no-such-model-xyz' not found")
    assert err.count("\n") == 1


def test_show_invalid_gguf_is_one_line_error(
    dirs: Dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = dirs.models / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    code, _, err = _run(capsys, "models", "show", "broken")
    assert code == 1
    assert err.startswith("error: ")
    assert "broken.gguf" in err
    assert "bad magic" in err
    assert err.count("\n") == 1


def test_search(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "search", "gemma")
    assert code == 0
    assert out.count("Gemma-3-") == 4
    code, _, err = _run(capsys, "models", "search", "zzz-nothing")
    assert code == 1
    assert "no catalog model matches" in err


def test_download_prints_path(
    dirs: Dirs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def hub(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(
            fake_hf_cache_file(Path(kwargs["cache_dir"]), kwargs["repo_id"], kwargs["filename"])
        )

    monkeypatch.setattr("mesh_llm.models.hub.huggingface_hub.hf_hub_download", hub)
    code, out, err = _run(capsys, "models", "download", "Qwen3-4B-Q4_K_M", "--draft", "--quiet")
    assert code == 0, err
    printed = out.split()
    assert [Path(p).name for p in printed] == ["Qwen3-4B-Q4_K_M.gguf", "Qwen3-0.6B-Q4_K_M.gguf"]
    assert all(Path(p).is_file() for p in printed)
    assert [c["filename"] for c in calls] == ["Qwen3-4B-Q4_K_M.gguf", "Qwen3-0.6B-Q4_K_M.gguf"]


def test_download_failure(
    dirs: Dirs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def hub(**kwargs: Any) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr("mesh_llm.models.hub.huggingface_hub.hf_hub_download", hub)
    code, out, err = _run(capsys, "models", "download", "Qwen3-4B-Q4_K_M", "--quiet")
    assert code == 1
    assert out == ""
    assert err.startswith("error: download of unsloth/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf")
    assert "network is unreachable" in err


def test_download_without_name_lists(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "download")
    assert code == 0
    assert "Qwen3-8B-Q4_K_M" in out
