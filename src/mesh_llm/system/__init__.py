"""Hardware and capacity probes, state-dir paths, platform quirks."""

from mesh_llm.system.hardware import (
    GB,
    GpuInfo,
    HardwareSurvey,
    capacity_bytes,
    parse_rocm_smi_csv,
    survey_hardware,
)
from mesh_llm.system.paths import cache_dir, hf_hub_cache, models_dir, state_dir

__all__ = [
    "GB",
    "GpuInfo",
    "HardwareSurvey",
    "cache_dir",
    "capacity_bytes",
    "hf_hub_cache",
    "models_dir",
    "parse_rocm_smi_csv",
    "state_dir",
    "survey_hardware",
]
