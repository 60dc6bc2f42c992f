"""The self-test on stand-in binaries: a crash is named by its signal, the conservative rebuild is
tried, and the final error names the log. The real binaries are proven in the e2e test."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

from mesh_llm.errors import BackendBuildError
from mesh_llm.inference import (
    LLAMA_CPP_COMMIT,
    Backend,
    BackendBinaries,
    BuildProfile,
    ensure_backend,
    locate_backend,
)
from mesh_llm.inference import backend as backend_module
from mesh_llm.inference.backend import build_dir, build_until_proven
from mesh_llm.inference.children import describe_exit
from mesh_llm.inference.selftest import (
    SelfTestResult,
    run_selftest,
    write_selftest_model,
)

FAKE = Path(__file__).resolve().parents[2] / "fakes" / "fake_llama_binaries.py"
SEGFAULT = "#!/bin/sh\nkill -SEGV $$\n"


def install(
    directory: Path, *, server: str | None = None, rpc: str | None = None
) -> BackendBinaries:
    """Binaries in ``directory``: the working fakes unless a shell script is given."""
    directory.mkdir(parents=True, exist_ok=True)
    working = f"#!{sys.executable}\n" + FAKE.read_text()
    for name, text in (("llama-server", server), ("ggml-rpc-server", rpc)):
        path = directory / name
        path.write_text(text if text is not None else working)
        path.chmod(0o755)
    return BackendBinaries(
        directory / "llama-server", directory / "ggml-rpc-server", "cache", "0c1e570", None
    )


def test_selftest_model_is_a_small_q4_1_llama(tmp_path: Path) -> None:
    path = write_selftest_model(tmp_path / "m.gguf")
    assert path.stat().st_size < 200_000
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q4_1
    assert list(tmp_path.iterdir()) == [path]  # written atomically, no temp file left


def test_working_binaries_pass(tmp_path: Path) -> None:
    bins = install(tmp_path / "bin")
    result = run_selftest(
        bins.llama_server, bins.rpc_server, model=tmp_path / "m.gguf", log_path=tmp_path / "log"
    )
    assert result.ok, result.detail
    assert "generated 4 tokens" in result.detail
    assert "protocol 3.0.0" in result.detail


def test_segfaulting_server_is_named_by_its_signal(tmp_path: Path) -> None:
    bins = install(tmp_path / "bin", server=SEGFAULT)
    log_path = tmp_path / "selftest.log"
    result = run_selftest(
        bins.llama_server, bins.rpc_server, model=tmp_path / "m.gguf", log_path=log_path
    )
    assert not result.ok
    assert result.detail == "llama-server was killed by SIGSEGV while loading the self-test model"
    assert "self-test FAILED" in log_path.read_text()
    assert result.seconds < 10


def test_rpc_server_that_closes_without_hello_fails(tmp_path: Path) -> None:
    silent = f"#!{sys.executable}\n" + (
        "import socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[sys.argv.index('-p') + 1])))\n"
        "s.listen()\n"
        "while True:\n    c, _ = s.accept(); c.close()\n"
    )
    bins = install(tmp_path / "bin", rpc=silent)
    result = run_selftest(
        bins.llama_server, bins.rpc_server, model=tmp_path / "m.gguf", log_path=tmp_path / "log"
    )
    assert not result.ok
    assert "HELLO" in result.detail


def test_missing_binary_is_a_clear_failure(tmp_path: Path) -> None:
    result = run_selftest(
        tmp_path / "nope", tmp_path / "nope-rpc", model=tmp_path / "m.gguf", log_path=tmp_path / "l"
    )
    assert not result.ok
    assert result.detail.startswith("cannot start llama-server")


def test_exit_descriptions() -> None:
    assert describe_exit(-11) == "was killed by SIGSEGV"
    assert describe_exit(-4) == "was killed by SIGILL"
    assert describe_exit(1) == "exited with code 1"


def _prove(tmp_path: Path) -> Callable[[BackendBinaries], SelfTestResult]:
    def prove(bins: BackendBinaries) -> SelfTestResult:
        return run_selftest(
            bins.llama_server,
            bins.rpc_server,
            model=tmp_path / "m.gguf",
            log_path=bins.llama_server.parent / "selftest.log",
        )

    return prove


def test_segfaulting_native_build_is_rebuilt_conservatively(tmp_path: Path) -> None:
    built: list[BuildProfile] = []
    said: list[str] = []

    def compile_profile(profile: BuildProfile) -> BackendBinaries:
        built.append(profile)
        shutil.rmtree(tmp_path / "bin", ignore_errors=True)
        crash = SEGFAULT if profile is BuildProfile.NATIVE else None
        return install(tmp_path / "bin", server=crash)

    bins = build_until_proven(
        tuple(BuildProfile),
        compile_profile,
        _prove(tmp_path),
        say=said.append,
        build_log=tmp_path / "build.log",
    )
    assert built == [BuildProfile.NATIVE, BuildProfile.CONSERVATIVE]
    assert bins.llama_server == tmp_path / "bin" / "llama-server"
    assert any("rebuilding without native tuning" in line for line in said)


def test_both_profiles_failing_stop_with_one_error_naming_the_logs(tmp_path: Path) -> None:
    built: list[BuildProfile] = []

    def compile_profile(profile: BuildProfile) -> BackendBinaries:
        built.append(profile)
        return install(tmp_path / "bin", server=SEGFAULT)

    with pytest.raises(BackendBuildError) as info:
        build_until_proven(
            tuple(BuildProfile),
            compile_profile,
            _prove(tmp_path),
            say=lambda _msg: None,
            build_log=tmp_path / "build.log",
        )
    assert built == [BuildProfile.NATIVE, BuildProfile.CONSERVATIVE]
    message = str(info.value)
    assert "native build: llama-server was killed by SIGSEGV" in message
    assert "conservative build: llama-server was killed by SIGSEGV" in message
    assert str(tmp_path / "bin" / "selftest.log") in message
    assert str(tmp_path / "build.log") in message


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESH_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MESH_LLM_BIN_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return tmp_path / "cache"


def _cached(profile: BuildProfile, *, server: str | None = None) -> BackendBinaries:
    bin_dir = build_dir(Backend.CPU) / "bin"
    install(bin_dir, server=server)
    info = {"commit": LLAMA_CPP_COMMIT, "backend": "cpu", "profile": profile.value}
    (bin_dir / "build-info.json").write_text(json.dumps(info))
    return locate_backend(None, Backend.CPU)


def test_ensure_proves_a_cached_build_once_per_machine(cache: Path) -> None:
    _cached(BuildProfile.NATIVE)
    said: list[str] = []
    ensure_backend(None, Backend.CPU, progress=said.append)
    assert any(line.startswith("self-test passed in") for line in said)
    said.clear()
    ensure_backend(None, Backend.CPU, progress=said.append)
    assert said == []  # remembered: same binaries, same CPU, same compiler
    server = build_dir(Backend.CPU) / "bin" / "llama-server"
    os.utime(server, ns=(server.stat().st_atime_ns, server.stat().st_mtime_ns + 10**9))
    ensure_backend(None, Backend.CPU, progress=said.append)
    assert any(line.startswith("self-test passed in") for line in said)


def test_cached_native_build_failing_here_is_rebuilt_conservatively(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache copied from another machine (or a new crash): rebuild with the next profile."""
    _cached(BuildProfile.NATIVE, server=SEGFAULT)
    calls: list[tuple[BuildProfile, ...]] = []

    def fake_build(backend: Backend, **kwargs: Any) -> BackendBinaries:
        calls.append(kwargs["profiles"])
        return _cached(BuildProfile.CONSERVATIVE)

    monkeypatch.setattr(backend_module, "build_backend", fake_build)
    bins = ensure_backend(None, Backend.CPU, progress=lambda _m: None)
    assert calls == [(BuildProfile.CONSERVATIVE,)]
    assert bins.source == "cache"


def test_cached_conservative_build_failing_here_is_a_clear_error(cache: Path) -> None:
    _cached(BuildProfile.CONSERVATIVE, server=SEGFAULT)
    with pytest.raises(BackendBuildError, match=r"killed by SIGSEGV.*log: .*selftest\.log"):
        ensure_backend(None, Backend.CPU, progress=lambda _m: None)


def test_user_binaries_failing_here_are_a_clear_error(cache: Path, tmp_path: Path) -> None:
    install(tmp_path / "mine", server=SEGFAULT)
    with pytest.raises(BackendBuildError) as info:
        ensure_backend(tmp_path / "mine", progress=lambda _m: None)
    assert f"binaries in {tmp_path / 'mine'} fail their self-test" in str(info.value)
    assert "SIGSEGV" in str(info.value)
