"""What the CPU can do: its architecture and instruction-set flags.

The llama.cpp build is tuned for the machine it runs on (``-march=native``), so the flags decide
both which code paths the build leaves out (AMX on x86, see ``docs/DESIGN.md`` "The llama.cpp
build") and which cached build a machine may use. :func:`parse_cpuinfo` is pure (tests feed it
samples); :func:`read_cpu_info` reads this machine.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["AMX_FLAGS", "CpuInfo", "parse_cpuinfo", "read_cpu_info"]

AMX_FLAGS: Final = frozenset({"amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex"})
X86_ARCHES: Final = frozenset({"x86_64", "amd64", "i386", "i686"})
ARM_ARCHES: Final = frozenset({"aarch64", "arm64"})
CPUINFO: Final = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The architecture (``uname -m``, normalised), the model name and the feature flags."""

    arch: str
    model: str
    flags: frozenset[str]

    @property
    def is_x86(self) -> bool:
        return self.arch in X86_ARCHES

    @property
    def is_arm(self) -> bool:
        return self.arch in ARM_ARCHES

    @property
    def amx(self) -> frozenset[str]:
        """The AMX extensions this CPU reports (empty off x86 or on older x86)."""
        return self.flags & AMX_FLAGS

    @property
    def fingerprint(self) -> str:
        """A short stable hash of the architecture and every flag: equal means same feature set."""
        text = self.arch + "\n" + " ".join(sorted(self.flags))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _normalise_arch(machine: str) -> str:
    machine = machine.lower()
    if machine == "amd64":
        return "x86_64"
    if machine == "arm64":
        return "aarch64"
    return machine


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """Read ``/proc/cpuinfo`` text: x86's ``flags`` line, ARM's ``Features`` line (first CPU)."""
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key == "cpu part" and not model:
            model = f"cpu part {value.strip()}"
    return CpuInfo(_normalise_arch(machine), model, flags)


def _sysctl(name: str, *, values_only: bool = True) -> str:
    argv = ["sysctl", "-n", name] if values_only else ["sysctl", name]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _darwin_cpu_info(machine: str) -> CpuInfo:
    """macOS: Intel lists features through sysctl; Apple silicon through ``hw.optional.arm.*``."""
    model = _sysctl("machdep.cpu.brand_string")
    words = " ".join(
        _sysctl(name) for name in ("machdep.cpu.features", "machdep.cpu.leaf7_features")
    ).lower()
    flags = set(words.replace(".", "_").split())
    if not flags:
        listing = _sysctl("hw.optional", values_only=False)
        for line in listing.splitlines():
            key, _, value = line.partition(":")
            if value.strip() == "1":
                flags.add(key.strip().rsplit(".", 1)[-1].lower())
    return CpuInfo(_normalise_arch(machine), model, frozenset(flags))


def read_cpu_info() -> CpuInfo:
    """This machine's CPU; an empty flag set where the platform does not say."""
    machine = platform.machine() or "unknown"
    if sys.platform == "darwin":
        return _darwin_cpu_info(machine)
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return CpuInfo(_normalise_arch(machine), platform.processor(), frozenset())
    return parse_cpuinfo(text, machine)
