"""End to end: the real ``mesh-llm`` names a mistyped flag, command or model, and suggests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import free_port


def _run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESH_LLM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "first_line"),
    [
        (["--models", "X"], "unrecognized argument --models; did you mean --model?"),
        (["-m", "X"], "unrecognized argument -m; did you mean --model?"),
        (["--api-port", "9340"], "unrecognized argument --api-port; did you mean --port?"),
        (["modles", "list"], "unknown command 'modles'; did you mean models?"),
    ],
)  # fmt: skip
def test_a_mistyped_flag_or_command_is_named(
    args: list[str], first_line: str, tmp_path: Path
) -> None:
    result = _run_cli(args, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("mesh-llm: error: " + first_line), result.stderr
    assert "invalid choice" not in result.stderr
    assert len(lines) == 2
    assert lines[1] == "run `mesh-llm --help` for what it takes"
    assert not list(tmp_path.iterdir())  # nothing started: no key, no logs


def test_a_misspelled_model_name_gets_a_suggestion(tmp_path: Path) -> None:
    result = _run_cli(
        ["--model", "SmolLM3-135M-Instruct", "--port", str(free_port()),
         "--console", str(free_port())],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: model 'SmolLM3-135M-Instruct' not found")
    assert "did you mean SmolLM2-135M-Instruct?" in result.stderr
