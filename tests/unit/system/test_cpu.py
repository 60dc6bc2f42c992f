"""CPU flags from /proc/cpuinfo samples: x86 with and without AMX, ARM."""

from __future__ import annotations

from mesh_llm.system.cpu import parse_cpuinfo
from tests.fakes.cpuinfo import EPYC, GRAVITON, SAPPHIRE_RAPIDS


def test_x86_with_amx() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert cpu.is_x86
    assert not cpu.is_arm
    assert cpu.amx == {"amx_tile", "amx_int8", "amx_bf16"}
    assert "avx512_vnni" in cpu.flags
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8488C"
    assert "spectre_v1" not in cpu.flags  # the bugs line is not a feature


def test_x86_without_amx() -> None:
    cpu = parse_cpuinfo(EPYC, "AMD64")
    assert cpu.arch == "x86_64"
    assert cpu.amx == frozenset()
    assert "avx2" in cpu.flags


def test_arm_features_line() -> None:
    cpu = parse_cpuinfo(GRAVITON, "arm64")
    assert cpu.arch == "aarch64"
    assert cpu.is_arm
    assert {"asimd", "sve", "i8mm"} <= cpu.flags
    assert cpu.amx == frozenset()
    assert cpu.model == "cpu part 0xd40"


def test_fingerprint_follows_features() -> None:
    a = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    b = parse_cpuinfo(EPYC, "x86_64")
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64").fingerprint
    reordered = EPYC.replace("avx2 bmi2", "bmi2 avx2")
    assert parse_cpuinfo(reordered, "x86_64").fingerprint == b.fingerprint


def test_empty_cpuinfo() -> None:
    cpu = parse_cpuinfo("", "riscv64")
    assert cpu.flags == frozenset()
    assert not cpu.is_x86
    assert not cpu.is_arm
