"""End to end: the real llama.cpp build is proven on this machine, carries no AMX code unless
asked, and a node given binaries that crash here stops with one clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mesh_llm.inference import BuildProfile, locate_backend
from mesh_llm.inference.build_plan import NO_AMX_FLAGS
from mesh_llm.system.cpu import read_cpu_info
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

MESH_LLM = [sys.executable, "-m", "mesh_llm"]


def test_backend_install_self_tests_the_real_build() -> None:
    proc = subprocess.run(
        [*MESH_LLM, "backend", "install", "--selftest"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test passed in" in proc.stderr
    assert "llama-server generated 4 tokens" in proc.stderr
    assert "rpc-server answered HELLO (protocol 7." in proc.stderr
    assert "self-test:    passed on this machine" in proc.stdout


def test_cached_build_is_keyed_and_built_for_this_cpu() -> None:
    bins = locate_backend()
    if bins.source != "cache":
        pytest.skip(f"binaries come from {bins.source}, not the build cache")
    cpu = read_cpu_info()
    info = json.loads((bins.llama_server.parent / "build-info.json").read_text())
    assert info["cpu"]["fingerprint"] == cpu.fingerprint
    assert bins.llama_server.parent.parent.name.startswith(f"{info['commit']}-cpu-{cpu.arch}-")
    assert info["profile"] in {p.value for p in BuildProfile}
    args = " ".join(info["cmake_args"])
    if cpu.is_x86 and cpu.amx and os.environ.get("MESH_LLM_LLAMA_AMX", "") in ("", "0"):
        assert all(flag in args for flag in NO_AMX_FLAGS)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_llama_server_has_no_amx_tile_instructions() -> None:
    """``tdpb*`` (AMX tile dot products) in the binary would mean the AMX kernels are in."""
    bins = locate_backend()
    info_path = bins.llama_server.parent / "build-info.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("amx_opt_in"):
        pytest.skip("built with the AMX opt-in")
    proc = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(bins.llama_server)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    amx = [line for line in proc.stdout.splitlines() if "\ttdpb" in line]
    assert amx == [], amx[:5]


def test_node_with_binaries_that_crash_here_stops_with_one_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    for name in ("llama-server", "ggml-rpc-server"):
        path = broken / name
        path.write_text("#!/bin/sh\nkill -SEGV $$\n")
        path.chmod(0o755)
    node = MeshNode(
        "broken",
        tmp_path / "home",
        ["--model", "SmolLM2-135M-Instruct", "--bin-dir", str(broken)],
        env={"MESH_LLM_EPHEMERAL_KEY": "1"},
    ).start()
    try:
        assert node.proc is not None
        code = wait_for(lambda: node.proc.poll() if node.proc else None, 60, "the node to exit")
        log = node.log_path.read_text()
        assert code != 0, log
        assert f"binaries in {broken} fail their self-test on this machine" in log, log
        assert "llama-server was killed by SIGSEGV" in log, log
        assert "selftest.log" in log, log
        assert "Traceback" not in log, log
    finally:
        node.stop()


def test_a_model_whose_llama_server_keeps_crashing_gets_a_503_that_says_why(
    tmp_path: Path,
) -> None:
    """Binaries that pass the self-test but crash on this model (as the AMX build did): stderr
    names the signal and the log, and requests get a 503 carrying that reason."""
    real = locate_backend()
    wrapped = tmp_path / "bin"
    wrapped.mkdir()
    server = wrapped / "llama-server"
    server.write_text(
        "#!/bin/sh\n"
        'case "$*" in *SmolLM2*) kill -SEGV $$ ;; esac\n'
        f'exec "{real.llama_server}" "$@"\n'
    )
    server.chmod(0o755)
    (wrapped / "ggml-rpc-server").symlink_to(real.rpc_server)
    node = MeshNode(
        "crashing",
        tmp_path / "home",
        ["--model", "SmolLM2-135M-Instruct", "--bin-dir", str(wrapped)],
        env={"MESH_LLM_EPHEMERAL_KEY": "1"},
    ).start()
    try:

        def refused() -> dict[str, object] | None:
            body = json.dumps(
                {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            request = urllib.request.Request(
                f"{node.api}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except urllib.error.HTTPError as exc:
                with exc:
                    if exc.code == 503:
                        error = json.loads(exc.read())["error"]
                        return error if "SIGSEGV" in error["message"] else None
            return None

        error = wait_for(refused, 60, "a 503 naming the crash")
        assert "is not available on this node" in str(error["message"])
        assert "llama-server was killed by SIGSEGV" in str(error["message"])
        assert "log: " in str(error["message"])
        log = node.log_path.read_text()
        assert "llama-server was killed by SIGSEGV while loading; log: " in log, log
    finally:
        node.stop()
