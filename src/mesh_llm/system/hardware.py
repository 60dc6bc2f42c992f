"""Hardware survey and the capacity ("VRAM") a node advertises (docs/DESIGN.md, "Hardware and
capacity").

| platform      | capacity                                                        |
|---------------|-----------------------------------------------------------------|
| macOS         | 0.75 x ``hw.memsize`` (unified memory, ``is_soc``)              |
| Linux NVIDIA  | sum of GPU memory (NVML) + 0.75 x max(0, RAM - GPU memory)      |
| Linux ROCm    | ``rocm-smi --showmeminfo vram --csv``, same formula             |
| CPU only      | 0.75 x RAM                                                      |

``--max-vram GB`` caps the value (GB = 1e9 bytes). Clients advertise 0.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

import psutil

__all__ = ["GB", "GpuInfo", "HardwareSurvey", "capacity_bytes", "survey_hardware"]

log = logging.getLogger(__name__)

GB = 1_000_000_000
RAM_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    vram_bytes: int


@dataclass(frozen=True, slots=True)
class HardwareSurvey:
    """What the machine has; the pure :func:`capacity_bytes` turns it into advertised capacity."""

    ram_bytes: int
    gpus: tuple[GpuInfo, ...]
    is_soc: bool
    hostname: str

    @property
    def gpu_bytes(self) -> int:
        return sum(g.vram_bytes for g in self.gpus)


def capacity_bytes(survey: HardwareSurvey, max_vram_gb: float | None = None) -> int:
    """The bytes of model a node offers: GPU memory plus 3/4 of the remaining RAM, capped."""
    if survey.is_soc:
        value = int(RAM_SHARE * survey.ram_bytes)
    else:
        spare = max(0, survey.ram_bytes - survey.gpu_bytes)
        value = survey.gpu_bytes + int(RAM_SHARE * spare)
    if max_vram_gb is not None:
        value = min(value, int(max_vram_gb * GB))
    return max(0, value)


def _nvidia_gpus() -> list[GpuInfo]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError or OSError when no driver: no NVIDIA GPU
        return []
    try:
        gpus = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(GpuInfo(str(name), total))
        return gpus
    except Exception as exc:  # noqa: BLE001 - a broken driver must not stop the node
        log.warning("NVIDIA GPU query failed: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


def parse_rocm_smi_csv(text: str) -> list[GpuInfo]:
    """Parse ``rocm-smi --showmeminfo vram --csv`` output (``device,VRAM Total Memory (B),...``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip().lower() for h in lines[0].split(",")]
    try:
        col = next(i for i, h in enumerate(header) if "total" in h and "vram" in h)
    except StopIteration:
        return []
    gpus = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) > col and cells[col].strip().isdigit():
            gpus.append(GpuInfo(cells[0].strip() or "AMD GPU", int(cells[col])))
    return gpus


def _rocm_gpus() -> list[GpuInfo]:
    exe = shutil.which("rocm-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--showmeminfo", "vram", "--csv"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_rocm_smi_csv(out)


def _macos_memsize() -> int | None:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        return int(out)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def survey_hardware() -> HardwareSurvey:
    """Probe GPUs and memory of this machine."""
    hostname = platform.node()
    if sys.platform == "darwin":
        ram = _macos_memsize() or int(psutil.virtual_memory().total)
        return HardwareSurvey(ram, (GpuInfo("Apple GPU", 0),), True, hostname)
    ram = int(psutil.virtual_memory().total)
    gpus = _nvidia_gpus() or _rocm_gpus()
    return HardwareSurvey(ram, tuple(gpus), False, hostname)
