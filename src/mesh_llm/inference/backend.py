"""Locate or build the llama.cpp binaries mesh-llm runs (``llama-server`` and ``rpc-server``).

Lookup order:

1. ``bin_dir`` (the CLI passes ``--bin-dir``, else ``MESH_LLM_BIN_DIR``);
2. ``PATH`` (``llama-server``; ``rpc-server`` or ``ggml-rpc-server``);
3. the build cache ``~/.cache/mesh-llm/llama.cpp/<commit>-<backend>/bin``.

When none has them, :func:`build_backend` builds the pinned source: the llama.cpp tree vendored
in the ``llama-cpp-python==0.3.36`` sdist on PyPI (llama.cpp commit ``0c1e570``), only the
``llama-server`` and ``ggml-rpc-server`` targets, static, with ``GGML_RPC=ON``. The build identity
(commit + backend) is recorded in ``build-info.json`` beside the binaries; RPC peers must run the
same build.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_llm.errors import BackendBuildError, BackendNotFoundError
from mesh_llm.inference.build_plan import (
    CMAKE_ARGS_ENV,
    BuildOptions,
    BuildProfile,
    build_key,
    cmake_args,
)
from mesh_llm.inference.selftest import SELFTEST_MODEL_VERSION, SelfTestResult, run_selftest
from mesh_llm.system import cache_dir
from mesh_llm.system.cpu import CpuInfo, read_cpu_info
from mesh_llm.system.locks import file_lock

__all__ = [
    "LLAMA_CPP_COMMIT",
    "Backend",
    "BackendBinaries",
    "build_backend",
    "build_until_proven",
    "compiler_id",
    "detect_backend",
    "ensure_backend",
    "locate_backend",
    "probe_devices",
    "prove_backend",
]

log = logging.getLogger(__name__)

LLAMA_CPP_COMMIT = "0c1e570"
SDIST_PACKAGE = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SERVER_NAME = "llama-server"
RPC_NAMES = ("rpc-server", "ggml-rpc-server")
BUILD_TARGETS = ("llama-server", "ggml-rpc-server")


class Backend(enum.StrEnum):
    """The compute backend a llama.cpp build targets."""

    CPU = "cpu"
    CUDA = "cuda"
    METAL = "metal"
    VULKAN = "vulkan"
    HIP = "hip"

    @property
    def is_gpu(self) -> bool:
        return self is not Backend.CPU


_CMAKE_FLAGS: dict[Backend, tuple[str, ...]] = {
    Backend.CPU: (),
    Backend.CUDA: ("-DGGML_CUDA=ON",),
    Backend.METAL: ("-DGGML_METAL=ON",),
    Backend.VULKAN: ("-DGGML_VULKAN=ON",),
    Backend.HIP: ("-DGGML_HIP=ON",),
}


@dataclass(frozen=True, slots=True)
class BackendBinaries:
    """Where the binaries are and which build they come from."""

    llama_server: Path
    rpc_server: Path
    source: str  # "bin-dir" | "path" | "cache"
    commit: str | None
    backend: Backend | None

    @property
    def build_id(self) -> str:
        """Identity gossiped to peers: RPC splits only use workers with an equal build id."""
        return f"{self.commit or 'unknown'}-{self.backend.value if self.backend else 'unknown'}"


def detect_backend() -> Backend:
    """Pick the backend whose toolkit *and* device are present; CPU otherwise."""
    if sys.platform == "darwin":
        return Backend.METAL
    if shutil.which("nvcc") and _has_nvidia_gpu():
        return Backend.CUDA
    if shutil.which("hipcc") and shutil.which("rocm-smi"):
        return Backend.HIP
    if shutil.which("glslc") and shutil.which("vulkaninfo"):
        return Backend.VULKAN
    return Backend.CPU


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount()) > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML raises its own tree, or OSError when the library is absent
        return False


def build_dir(backend: Backend, options: BuildOptions | None = None) -> Path:
    """This machine's cache directory for ``backend`` (see :func:`build_plan.build_key`)."""
    key = build_key(LLAMA_CPP_COMMIT, backend.value, read_cpu_info(), options or BuildOptions())
    return cache_dir() / "llama.cpp" / key


def _read_build_info(bin_dir: Path) -> tuple[str | None, Backend | None]:
    for candidate in (bin_dir / "build-info.json", bin_dir.parent / "build-info.json"):
        try:
            info = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        try:
            return str(info["commit"]), Backend(info["backend"])
        except (KeyError, ValueError):
            return None, None
    return None, None


def _find_in_dir(directory: Path) -> tuple[Path, Path] | None:
    server = directory / SERVER_NAME
    if not _is_executable(server):
        return None
    for name in RPC_NAMES:
        rpc = directory / name
        if _is_executable(rpc):
            return server, rpc
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def locate_backend(
    bin_dir: str | Path | None = None,
    backend: Backend | None = None,
    options: BuildOptions | None = None,
) -> BackendBinaries:
    """Find the binaries without building; the error names every place searched."""
    searched: list[str] = []
    if bin_dir:
        directory = Path(bin_dir).expanduser()
        found = _find_in_dir(directory)
        if found is None:
            raise BackendNotFoundError(
                f"no llama-server and rpc-server/ggml-rpc-server in --bin-dir {directory}"
            )
        commit, be = _read_build_info(directory)
        return BackendBinaries(found[0], found[1], "bin-dir", commit, be)
    searched.append("--bin-dir/MESH_LLM_BIN_DIR (unset)")

    server_on_path = shutil.which(SERVER_NAME)
    rpc_on_path = next((p for p in (shutil.which(n) for n in RPC_NAMES) if p), None)
    if server_on_path and rpc_on_path:
        commit, be = _read_build_info(Path(server_on_path).parent)
        return BackendBinaries(Path(server_on_path), Path(rpc_on_path), "path", commit, be)
    searched.append("PATH")

    backends = [backend] if backend else [detect_backend(), Backend.CPU]
    for be_choice in dict.fromkeys(backends):
        directory = build_dir(be_choice, options) / "bin"
        found = _find_in_dir(directory)
        if found is not None:
            commit, be = _read_build_info(directory)
            return BackendBinaries(found[0], found[1], "cache", commit, be or be_choice)
        searched.append(str(directory))
    raise BackendNotFoundError(
        "llama.cpp binaries not found (searched: " + ", ".join(searched) + "); "
        "run `mesh-llm backend install` to build them"
    )


def ensure_backend(
    bin_dir: str | Path | None = None,
    backend: Backend | None = None,
    *,
    options: BuildOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> BackendBinaries:
    """Binaries proven to work on this machine: located (or built from the pinned source when
    none are found), then self-tested unless this exact pair already passed on this CPU.

    A cached build that fails its self-test is rebuilt with the next profile; anything else that
    fails raises :class:`BackendBuildError` naming the self-test log.
    """
    options = options or BuildOptions()
    say = progress or (lambda msg: log.info("%s", msg))
    explicit = bool(bin_dir)
    try:
        bins = locate_backend(bin_dir, backend, options)
    except BackendNotFoundError:
        if explicit:
            raise
        chosen = backend or detect_backend()
        with _build_lock(chosen, options):
            try:  # another process may have built it while we waited for the lock
                bins = locate_backend(None, chosen, options)
            except BackendNotFoundError:
                return build_backend(chosen, options=options, progress=progress)
    result = prove_backend(bins, progress=say)
    if result.ok:
        return bins
    if bins.source != "cache" or bins.backend is None:
        raise BackendBuildError(
            f"the llama.cpp binaries in {bins.llama_server.parent} fail their self-test on this "
            f"machine: {result.detail}; log: {result.log_path}"
        )
    profiles = _profiles_after(_read_profile(bins.llama_server.parent))
    if not profiles:
        raise BackendBuildError(
            f"the cached llama.cpp build in {bins.llama_server.parent} fails its self-test on "
            f"this machine: {result.detail}; log: {result.log_path}"
        )
    say(f"cached llama.cpp build fails its self-test ({result.detail}); rebuilding")
    with _build_lock(bins.backend, options):
        return build_backend(bins.backend, options=options, progress=progress, profiles=profiles)


def _profiles_after(profile: BuildProfile | None) -> tuple[BuildProfile, ...]:
    order = tuple(BuildProfile)
    if profile is None:
        return order
    return order[order.index(profile) + 1 :]


def _read_profile(bin_dir: Path) -> BuildProfile | None:
    try:
        return BuildProfile(json.loads((bin_dir / "build-info.json").read_text())["profile"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _build_lock(backend: Backend, options: BuildOptions) -> Iterator[None]:
    """One build per cache directory at a time, across processes (``flock``)."""
    root = build_dir(backend, options)
    with file_lock(root.parent / f"{root.name}.lock"):
        yield


# -------------------------------------------------------------------------------------- self-test


@functools.cache
def compiler_id() -> str:
    """The first line of ``c++ --version`` (``none`` without a compiler): part of what a
    self-test record vouches for."""
    for name in ("c++", "g++", "clang++", "cc"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = out.stdout.strip().splitlines()
        if lines:
            return lines[0].strip()
    return "none"


def _selftest_identity(bins: BackendBinaries, cpu: CpuInfo) -> str:
    parts: list[object] = [cpu.fingerprint, compiler_id(), SELFTEST_MODEL_VERSION]
    for binary in (bins.llama_server, bins.rpc_server):
        real = binary.resolve()
        stat = real.stat()
        parts += [str(real), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _selftest_records() -> Path:
    return cache_dir() / "llama.cpp" / "selftests.json"


def _load_records() -> dict[str, Any]:
    try:
        data = json.loads(_selftest_records().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_record(identity: str, result: SelfTestResult) -> None:
    records = _load_records()
    records[identity] = {"seconds": round(result.seconds, 2), "detail": result.detail}
    records[identity]["at"] = int(time.time())
    path = _selftest_records()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only shared cache: the self-test simply runs again next time
        log.warning("cannot record the self-test result in %s: %s", path, exc)


def prove_backend(
    bins: BackendBinaries,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> SelfTestResult:
    """Self-test ``bins`` on this machine unless the same binaries already passed here (same CPU
    features, same compiler). Passing results are remembered in the cache."""
    say = progress or (lambda msg: log.info("%s", msg))
    cpu = read_cpu_info()
    identity = _selftest_identity(bins, cpu)
    log_dir = bins.llama_server.parent
    if bins.source != "cache" or not os.access(log_dir, os.W_OK):
        log_dir = cache_dir() / "llama.cpp" / f"selftest-{identity[:12]}"
    log_path = log_dir / "selftest.log"
    if not force:
        record = _load_records().get(identity)
        if isinstance(record, dict):
            return SelfTestResult(True, 0.0, f"passed before: {record.get('detail')}", log_path)
    say("self-testing llama-server and rpc-server on this machine")
    model = cache_dir() / "llama.cpp" / f"selftest-v{SELFTEST_MODEL_VERSION}.gguf"
    result = run_selftest(bins.llama_server, bins.rpc_server, model=model, log_path=log_path)
    if result.ok:
        say(f"self-test passed in {result.seconds:.1f} s ({result.detail})")
        _save_record(identity, result)
    else:
        say(f"self-test FAILED after {result.seconds:.1f} s: {result.detail}; log: {log_path}")
    return result


# ----------------------------------------------------------------------------------------- build


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _require_tools(backend: Backend) -> None:
    needed = ["cmake", "c++" if shutil.which("c++") else "g++", "make"]
    if backend is Backend.CUDA:
        needed.append("nvcc")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise BackendBuildError(
            "cannot build llama.cpp: missing "
            + ", ".join(missing)
            + " (install cmake and a C++ compiler)"
        )


def _download_sdist(dest: Path, log_file: Path) -> Path:
    existing = sorted(dest.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
        "--disable-pip-version-check", "-d", str(dest), f"{SDIST_PACKAGE}=={SDIST_VERSION}",
    ]  # fmt: skip
    _run_logged(argv, log_file, what="download of the llama.cpp source (pip download)")
    found = sorted(dest.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))
    if not found:
        raise BackendBuildError(f"pip download produced no sdist; see {log_file}")
    return found[0]


def _extract_vendor(sdist: Path, dest: Path) -> Path:
    """Extract ``vendor/llama.cpp`` (without its models/docs/examples data) into ``dest``."""
    marker = dest / "CMakeLists.txt"
    if marker.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix="llama-src-", dir=dest.parent))
    skip = ("models/", "docs/", "media/", "examples/", "tests/", ".devops/")  # top-level data only
    try:
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                    continue
                rel = parts[1][len("vendor/llama.cpp/") :]
                if rel.startswith(skip):
                    continue
                member.name = rel
                members.append(member)
            archive.extractall(tmp, members=members, filter="data")
        if not (tmp / "CMakeLists.txt").exists():
            raise BackendBuildError(f"{sdist.name} has no vendor/llama.cpp tree")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _run_logged(
    argv: list[str],
    log_file: Path,
    *,
    what: str,
    progress: Callable[[str], None] | None = None,
) -> None:
    with log_file.open("a") as sink:
        sink.write(f"\n$ {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last = -1
        for line in proc.stdout:
            sink.write(line)
            match = _PERCENT.match(line)
            if progress and match and int(match.group(1)) != last:
                last = int(match.group(1))
                progress(f"building llama.cpp: {last}%")
        code = proc.wait()
    if code != 0:
        raise BackendBuildError(f"{what} failed (exit {code}); full log: {log_file}")


def _compile(
    backend: Backend,
    src: Path,
    root: Path,
    args: tuple[str, ...],
    *,
    say: Callable[[str], None],
    log_file: Path,
    jobs: int,
) -> Path:
    """Configure and build the two targets into ``root/build``; returns ``root/bin``."""
    build = root / "build"
    shutil.rmtree(build, ignore_errors=True)  # a new profile must not reuse the old cache vars
    configure = ["cmake", "-S", str(src), "-B", str(build), *args]
    say(f"configuring llama.cpp ({backend.value}); log: {log_file}")
    _run_logged(configure, log_file, what="cmake configure")
    compile_argv = ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs)]
    compile_argv += ["--target", *BUILD_TARGETS]
    say(f"compiling llama-server and ggml-rpc-server with {jobs} jobs (several minutes)")
    _run_logged(compile_argv, log_file, what="llama.cpp build", progress=say)
    bin_dir = root / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    for name in BUILD_TARGETS:
        produced = build / "bin" / name
        if not produced.exists():
            raise BackendBuildError(f"build finished but {produced} is missing; see {log_file}")
        shutil.copy2(produced, bin_dir / name)
    shutil.rmtree(build, ignore_errors=True)
    return bin_dir


CompileStep = Callable[[BuildProfile], BackendBinaries]
ProveStep = Callable[[BackendBinaries], SelfTestResult]


def build_until_proven(
    profiles: tuple[BuildProfile, ...],
    compile_profile: CompileStep,
    prove: ProveStep,
    *,
    say: Callable[[str], None],
    build_log: Path,
) -> BackendBinaries:
    """Build each profile in turn until one passes its self-test; else one clear error."""
    failures: list[str] = []
    last_log: Path | None = None
    for profile in profiles:
        bins = compile_profile(profile)
        result = prove(bins)
        if result.ok:
            return bins
        last_log = result.log_path
        failures.append(f"{profile.value} build: {result.detail}")
        if profile is not profiles[-1]:
            say(f"the {profile.value} build fails its self-test; rebuilding without native tuning")
    raise BackendBuildError(
        "the llama.cpp build fails its self-test on this machine ("
        + "; ".join(failures)
        + f"); self-test log: {last_log}; build log: {build_log}. "
        f"Extra cmake arguments can be given with {CMAKE_ARGS_ENV}, or point --bin-dir at "
        "binaries that work here"
    )


def build_backend(
    backend: Backend = Backend.CPU,
    *,
    options: BuildOptions | None = None,
    progress: Callable[[str], None] | None = None,
    jobs: int | None = None,
    profiles: tuple[BuildProfile, ...] = tuple(BuildProfile),
) -> BackendBinaries:
    """Build the pinned llama.cpp for ``backend`` into this machine's cache directory, trying
    ``profiles`` in order until a build passes its self-test."""
    options = options or BuildOptions()
    _require_tools(backend)
    cpu = read_cpu_info()
    root = build_dir(backend, options)
    root.mkdir(parents=True, exist_ok=True)
    log_file = root / "build.log"
    log_file.write_text(f"mesh-llm build of llama.cpp {LLAMA_CPP_COMMIT} ({backend.value})\n")
    say = progress or (lambda msg: log.info("%s", msg))
    started = time.monotonic()
    if cpu.amx:
        state = "kept (opt-in)" if options.amx else "left out (crash in the pinned ggml)"
        say(f"CPU has AMX ({', '.join(sorted(cpu.amx))}): AMX kernels {state}")

    say(f"fetching llama.cpp source ({SDIST_PACKAGE}=={SDIST_VERSION} sdist)")
    sdist = _download_sdist(cache_dir() / "downloads", log_file)
    src = _extract_vendor(sdist, cache_dir() / "llama.cpp" / f"src-{LLAMA_CPP_COMMIT}")
    workers = jobs or os.cpu_count() or 2

    def compile_profile(profile: BuildProfile) -> BackendBinaries:
        args = cmake_args(_CMAKE_FLAGS[backend], cpu, profile, options)
        profile_started = time.monotonic()
        bin_dir = _compile(backend, src, root, args, say=say, log_file=log_file, jobs=workers)
        info = {
            "commit": LLAMA_CPP_COMMIT,
            "backend": backend.value,
            "profile": profile.value,
            "built_at": int(time.time()),
            "cmake_args": list(args),
            "amx_opt_in": options.amx,
            "cpu": {"arch": cpu.arch, "model": cpu.model, "fingerprint": cpu.fingerprint},
            "compiler": compiler_id(),
        }
        (bin_dir / "build-info.json").write_text(json.dumps(info, indent=1))
        say(
            f"llama.cpp built ({profile.value}) in {time.monotonic() - profile_started:.0f} s: "
            f"{bin_dir}"
        )
        return BackendBinaries(
            bin_dir / "llama-server",
            bin_dir / "ggml-rpc-server",
            "cache",
            LLAMA_CPP_COMMIT,
            backend,
        )

    bins = build_until_proven(
        profiles,
        compile_profile,
        lambda b: prove_backend(b, progress=say, force=True),
        say=say,
        build_log=log_file,
    )
    say(f"llama.cpp ready in {time.monotonic() - started:.0f} s")
    return bins


# --------------------------------------------------------------------------------------- devices

_DEVICE_LINE = re.compile(r"^\s*([A-Za-z]+\d*)\s*:\s*(.*)$")


def parse_device_listing(text: str) -> list[tuple[str, str]]:
    """Parse the ``Available devices:`` block of ``rpc-server --help`` (``(none)``: CPU only)."""
    devices: list[tuple[str, str]] = []
    in_block = False
    for line in text.splitlines():
        if "available devices" in line.lower():
            in_block = True
            continue
        if in_block:
            match = _DEVICE_LINE.match(line)
            if not match:
                if devices:
                    break
                continue
            devices.append((match.group(1), match.group(2).strip()))
    return devices


def probe_devices(rpc_server: Path, timeout: float = 20.0) -> list[tuple[str, str]]:
    """Ask ``rpc-server`` which accelerator devices it can use (``NAME: description`` pairs).

    The pinned build lists only accelerators; an empty list means the CPU backend.
    """
    try:
        proc = subprocess.run(
            [str(rpc_server), "--help"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_device_listing(proc.stdout + "\n" + proc.stderr)
