"""How llama.cpp is configured for a machine, and which cached build a machine may use. Pure.

Two build profiles, tried in order (``docs/DESIGN.md`` "The llama.cpp build"):

- ``native``: ``-DGGML_NATIVE=ON`` (``-march=native``), except that on x86 CPUs with AMX the AMX
  kernels are compiled out (``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16``): the pinned ggml
  segfaults in ``ggml_backend_amx_mul_mat`` on such CPUs (llama.cpp issue 20824, PR 26954).
  ``MESH_LLM_LLAMA_AMX=1`` / ``backend install --amx`` keeps them.
- ``conservative``: no native tuning, only the baseline extensions the CPU reports (x86: SSE4.2,
  AVX, AVX2, BMI2, FMA, F16C; never AVX-512 or AMX). Used when a native build fails its self-test.

Extra arguments (``MESH_LLM_LLAMA_CMAKE_ARGS``) come last, so they win; ``-DCMAKE_C_FLAGS`` /
``-DCMAKE_CXX_FLAGS`` among them are merged with ours instead of replacing them.

The cache key names what makes a binary valid on a machine: the llama.cpp commit, the backend,
the CPU architecture, and a hash of the CPU's feature flags (what ``-march=native`` compiles for)
and the build options. A cache shared between machines (NFS home, a copied ``~/.cache``) thus
never hands a binary to a CPU with other features.
"""

from __future__ import annotations

import enum
import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mesh_llm.errors import ConfigError
from mesh_llm.system.cpu import CpuInfo

__all__ = [
    "AMX_ENV",
    "CMAKE_ARGS_ENV",
    "NO_AMX_FLAGS",
    "BuildOptions",
    "BuildProfile",
    "build_key",
    "cmake_args",
]

AMX_ENV: Final = "MESH_LLM_LLAMA_AMX"
CMAKE_ARGS_ENV: Final = "MESH_LLM_LLAMA_CMAKE_ARGS"
NO_AMX_FLAGS: Final = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
BASE_ARGS: Final = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_RPC=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
# ggml option -> the /proc/cpuinfo flag that must be present for the conservative x86 build
X86_BASELINE: Final = (
    ("GGML_SSE42", "sse4_2"),
    ("GGML_AVX", "avx"),
    ("GGML_AVX2", "avx2"),
    ("GGML_BMI2", "bmi2"),
    ("GGML_FMA", "fma"),
    ("GGML_F16C", "f16c"),
)
X86_NEVER_CONSERVATIVE: Final = (
    "GGML_AVX_VNNI",
    "GGML_AVX512",
    "GGML_AVX512_VBMI",
    "GGML_AVX512_VNNI",
    "GGML_AVX512_BF16",
    "GGML_AMX_TILE",
    "GGML_AMX_INT8",
    "GGML_AMX_BF16",
)
FLAG_VARS: Final = ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS")
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"", "0", "false", "no", "off"})


class BuildProfile(enum.StrEnum):
    """How much the build is tuned to this CPU."""

    NATIVE = "native"
    CONSERVATIVE = "conservative"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What the user chose about the build (flags or environment, read by the CLI)."""

    amx: bool = False
    extra_cmake_args: tuple[str, ...] = ()

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        amx: bool | None = None,
        extra_cmake_args: str | None = None,
    ) -> BuildOptions:
        """Options from the environment; explicit values (command-line flags) win."""
        if amx is None:
            word = environ.get(AMX_ENV, "").strip().lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise ConfigError(f"{AMX_ENV}={word!r}: expected 1/0, true/false, yes/no, on/off")
            amx = word in TRUE_WORDS
        text = extra_cmake_args if extra_cmake_args is not None else environ.get(CMAKE_ARGS_ENV, "")
        try:
            extra = tuple(shlex.split(text))
        except ValueError as exc:
            raise ConfigError(f"cannot parse extra cmake arguments {text!r}: {exc}") from exc
        return cls(amx=amx, extra_cmake_args=extra)


def _split_define(arg: str) -> tuple[str, str] | None:
    """``-DNAME=value`` or ``-DNAME:TYPE=value`` -> (NAME, value)."""
    if not arg.startswith("-D") or "=" not in arg:
        return None
    name, _, value = arg[2:].partition("=")
    return name.partition(":")[0], value


def _native_args(cpu: CpuInfo, options: BuildOptions) -> tuple[list[str], list[str]]:
    """(cmake -D arguments, compiler flags) of the native profile."""
    compiler_flags: list[str] = []
    if cpu.is_x86 and cpu.amx and not options.amx:
        # Only where the CPU has AMX: there -march=native turns it on, and any compiler that
        # knows this CPU knows these options (older ones would reject them).
        compiler_flags += NO_AMX_FLAGS
    return ["-DGGML_NATIVE=ON"], compiler_flags


def _conservative_args(cpu: CpuInfo) -> list[str]:
    args = ["-DGGML_NATIVE=OFF"]
    if cpu.is_x86:
        args += [f"-D{opt}={'ON' if flag in cpu.flags else 'OFF'}" for opt, flag in X86_BASELINE]
        args += [f"-D{opt}=OFF" for opt in X86_NEVER_CONSERVATIVE]
    return args


def cmake_args(
    backend_flags: tuple[str, ...],
    cpu: CpuInfo,
    profile: BuildProfile,
    options: BuildOptions,
) -> tuple[str, ...]:
    """The cmake configure arguments (without ``-S``/``-B``) for one profile on one CPU."""
    compiler_flags: list[str] = []
    match profile:
        case BuildProfile.NATIVE:
            args, compiler_flags = _native_args(cpu, options)
        case BuildProfile.CONSERVATIVE:
            args = _conservative_args(cpu)
    extra: list[str] = []
    user_flags: dict[str, str] = {}
    for arg in options.extra_cmake_args:
        define = _split_define(arg)
        if define is not None and define[0] in FLAG_VARS:
            user_flags[define[0]] = define[1]
        else:
            extra.append(arg)
    flags: list[str] = []
    for var in FLAG_VARS:
        value = " ".join([*compiler_flags, user_flags.get(var, "")]).strip()
        if value:
            flags.append(f"-D{var}={value}")
    return (*BASE_ARGS, *args, *backend_flags, *flags, *extra)


def build_key(commit: str, backend: str, cpu: CpuInfo, options: BuildOptions) -> str:
    """The cache directory name: ``<commit>-<backend>-<arch>-<hash of features and options>``."""
    payload = json.dumps(
        {
            "flags": sorted(cpu.flags),
            "amx": options.amx,
            "cmake": list(options.extra_cmake_args),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{commit}-{backend}-{cpu.arch}-{digest}"
