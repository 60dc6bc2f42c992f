"""Build flag selection and cache keys from CPU samples (no AMX machine needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.inference.build_plan import (
    NO_AMX_FLAGS,
    BuildOptions,
    BuildProfile,
    build_key,
    cmake_args,
)
from mesh_llm.system.cpu import CpuInfo, parse_cpuinfo
from tests.fakes.cpuinfo import EPYC, GRAVITON, SAPPHIRE_RAPIDS

AMX_CPU = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
EPYC_CPU = parse_cpuinfo(EPYC, "x86_64")
ARM_CPU = parse_cpuinfo(GRAVITON, "aarch64")
NATIVE = BuildProfile.NATIVE
CONSERVATIVE = BuildProfile.CONSERVATIVE


def defines(args: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args:
        if arg.startswith("-D"):
            name, _, value = arg[2:].partition("=")
            out[name] = value
    return out


def test_native_on_amx_cpu_leaves_amx_out() -> None:
    d = defines(cmake_args((), AMX_CPU, NATIVE, BuildOptions()))
    assert d["GGML_NATIVE"] == "ON"
    for var in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS"):
        assert d[var].split() == list(NO_AMX_FLAGS)


def test_amx_opt_in_keeps_it() -> None:
    d = defines(cmake_args((), AMX_CPU, NATIVE, BuildOptions(amx=True)))
    assert d["GGML_NATIVE"] == "ON"
    assert "CMAKE_C_FLAGS" not in d
    assert "CMAKE_CXX_FLAGS" not in d


@pytest.mark.parametrize("cpu", [EPYC_CPU, ARM_CPU], ids=["x86-no-amx", "arm"])
def test_native_without_amx_adds_no_compiler_flags(cpu: CpuInfo) -> None:
    args = cmake_args((), cpu, NATIVE, BuildOptions())
    d = defines(args)
    assert d["GGML_NATIVE"] == "ON"
    assert "CMAKE_C_FLAGS" not in d
    assert not any("amx" in arg.lower() for arg in args)


def test_conservative_x86_uses_only_reported_baseline() -> None:
    no_avx2 = CpuInfo("x86_64", "old", EPYC_CPU.flags - {"avx2", "bmi2"})
    d = defines(cmake_args((), no_avx2, CONSERVATIVE, BuildOptions()))
    assert d["GGML_NATIVE"] == "OFF"
    assert d["GGML_AVX"] == "ON"
    assert d["GGML_FMA"] == "ON"
    assert d["GGML_AVX2"] == "OFF"
    assert d["GGML_BMI2"] == "OFF"
    for opt in ("GGML_AVX512", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert d[opt] == "OFF"


def test_conservative_on_amx_cpu_never_enables_amx_even_when_opted_in() -> None:
    d = defines(cmake_args((), AMX_CPU, CONSERVATIVE, BuildOptions(amx=True)))
    assert d["GGML_NATIVE"] == "OFF"
    assert d["GGML_AMX_INT8"] == "OFF"
    assert d["GGML_AVX512"] == "OFF"


def test_conservative_arm_is_just_not_native() -> None:
    args = cmake_args((), ARM_CPU, CONSERVATIVE, BuildOptions())
    d = defines(args)
    assert d["GGML_NATIVE"] == "OFF"
    assert "GGML_AVX" not in d


def test_backend_flags_and_extra_args_come_last() -> None:
    options = BuildOptions(extra_cmake_args=("-DGGML_CUDA_FA=OFF", "-DGGML_NATIVE=OFF"))
    args = cmake_args(("-DGGML_CUDA=ON",), EPYC_CPU, NATIVE, options)
    assert args[-2:] == ("-DGGML_CUDA_FA=OFF", "-DGGML_NATIVE=OFF")
    assert args.index("-DGGML_CUDA=ON") < args.index("-DGGML_CUDA_FA=OFF")
    assert defines(args)["GGML_NATIVE"] == "OFF"  # the user's value wins (cmake: last -D)


def test_user_compiler_flags_merge_with_ours() -> None:
    options = BuildOptions(extra_cmake_args=("-DCMAKE_C_FLAGS:STRING=-g -O3",))
    d = defines(cmake_args((), AMX_CPU, NATIVE, options))
    assert d["CMAKE_C_FLAGS"].split() == [*NO_AMX_FLAGS, "-g", "-O3"]
    assert d["CMAKE_CXX_FLAGS"].split() == list(NO_AMX_FLAGS)


def test_cache_key_changes_with_features_and_options() -> None:
    base = build_key("0c1e570", "cpu", EPYC_CPU, BuildOptions())
    assert base.startswith("0c1e570-cpu-x86_64-")
    assert base == build_key("0c1e570", "cpu", EPYC_CPU, BuildOptions())
    more = CpuInfo(EPYC_CPU.arch, EPYC_CPU.model, EPYC_CPU.flags | {"amx_tile"})
    assert build_key("0c1e570", "cpu", more, BuildOptions()) != base
    assert build_key("0c1e570", "cpu", EPYC_CPU, BuildOptions(amx=True)) != base
    extra = BuildOptions(extra_cmake_args=("-DGGML_LTO=ON",))
    assert build_key("0c1e570", "cpu", EPYC_CPU, extra) != base
    assert build_key("0c1e570", "cuda", EPYC_CPU, BuildOptions()) != base
    renamed = CpuInfo(EPYC_CPU.arch, "another name", EPYC_CPU.flags)
    assert build_key("0c1e570", "cpu", renamed, BuildOptions()) == base


def test_options_from_environment() -> None:
    env = {"MESH_LLM_LLAMA_AMX": "yes", "MESH_LLM_LLAMA_CMAKE_ARGS": "-DA=1 '-DB=two words'"}
    options = BuildOptions.from_environ(env)
    assert options == BuildOptions(amx=True, extra_cmake_args=("-DA=1", "-DB=two words"))
    assert BuildOptions.from_environ({}) == BuildOptions()
    flags_win = BuildOptions.from_environ(env, amx=False, extra_cmake_args="-DC=3")
    assert flags_win == BuildOptions(amx=False, extra_cmake_args=("-DC=3",))


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"MESH_LLM_LLAMA_AMX": "maybe"}, "MESH_LLM_LLAMA_AMX"),
        ({"MESH_LLM_LLAMA_CMAKE_ARGS": "-DA='unclosed"}, "cannot parse"),
    ],
)
def test_bad_options_are_config_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BuildOptions.from_environ(env)


def _amx_macros(flags: list[str]) -> list[str]:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler is not None
    proc = subprocess.run(
        [compiler, *flags, "-march=sapphirerapids", "-dM", "-E", "-x", "c", "-"],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"this compiler does not know -march=sapphirerapids: {proc.stderr.strip()}")
    return sorted(line.split()[1] for line in proc.stdout.splitlines() if "__AMX_" in line)


@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
    reason="no C compiler",
)
def test_our_flags_turn_amx_off_after_march_on_this_compiler() -> None:
    """What ggml keys its AMX kernels on (``__AMX_INT8__``) is gone with our flags, although
    ggml puts ``-march=native`` after them on the command line."""
    assert "__AMX_INT8__" in _amx_macros([])
    assert _amx_macros(list(NO_AMX_FLAGS)) == []
