"""End to end: ``mesh-llm models download`` with the Hub unreachable ends at once, in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def test_unreachable_hub_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        env = {
            **os.environ,
            "MESH_LLM_HOME": str(tmp_path / "home"),
            "MESH_LLM_MODELS_DIR": str(tmp_path / "models"),
            "HF_HUB_CACHE": str(tmp_path / "hf"),
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        }
        for name in ("http_proxy", "https_proxy", "all_proxy", "HF_HUB_OFFLINE"):
            env.pop(name, None)
            env.pop(name.upper(), None)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "mesh_llm", "models", "download", "Qwen3-0.6B-Q4_K_M"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s\n{result.stderr}"
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"error: cannot reach 127.0.0.1:{port} to download "
        "unsloth/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q4_K_M.gguf (Connection refused); models already "
        "on disk still work offline; `mesh-llm models installed` lists them"
    ], result.stderr
    assert "Retry" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(set(lines)), result.stderr
