"""Two nodes, one state directory: one identity, separate logs (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.runtime.home import acquire_home

HOLDER = """
import sys, time
from pathlib import Path
from mesh_llm.runtime.home import acquire_home
lease = acquire_home(Path(sys.argv[1]), uses_home_key=True)
print(lease.owner, flush=True)
time.sleep(60)
"""


@pytest.fixture
def first_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "True"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_second_node_with_the_same_key_is_refused_naming_the_first(
    tmp_path: Path, first_node: subprocess.Popen[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        acquire_home(tmp_path, uses_home_key=True)
    message = str(info.value)
    assert f"pid {first_node.pid}" in message
    assert "MESH_LLM_EPHEMERAL_KEY=1" in message
    assert str(tmp_path) in message


def test_a_second_node_with_a_fresh_identity_shares_the_home_with_its_own_logs(
    tmp_path: Path, first_node: subprocess.Popen[str]
) -> None:
    lease = acquire_home(tmp_path, uses_home_key=False)
    assert lease.owner is False
    assert lease.log_dir.parent == tmp_path / "logs"
    assert lease.log_dir.name.startswith("node-")


def test_the_lock_dies_with_its_holder(tmp_path: Path, first_node: subprocess.Popen[str]) -> None:
    first_node.kill()
    first_node.wait()
    lease = acquire_home(tmp_path, uses_home_key=True)
    try:
        assert lease.owner is True
        assert lease.log_dir == tmp_path / "logs"
    finally:
        lease.release()
    again = acquire_home(tmp_path, uses_home_key=True)  # released: free again
    again.release()
