"""Logging set-up: a Hugging Face warning is printed once, through our handler."""

from __future__ import annotations

import subprocess
import sys


def test_huggingface_warnings_are_printed_once() -> None:
    code = (
        "import logging\n"
        "from mesh_llm.cli.main import _configure_logging\n"
        "_configure_logging('info')\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "Retrying" in line]
    assert len(lines) == 1, result.stderr
    assert "WARNING huggingface_hub.utils._http: Retrying in 1s" in lines[0]
