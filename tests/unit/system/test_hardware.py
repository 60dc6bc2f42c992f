from mesh_llm.system import GpuInfo, HardwareSurvey, capacity_bytes, parse_rocm_smi_csv

GB = 1_000_000_000


def survey(ram: int, gpus: tuple[GpuInfo, ...] = (), soc: bool = False) -> HardwareSurvey:
    return HardwareSurvey(ram_bytes=ram, gpus=gpus, is_soc=soc, hostname="h")


def test_cpu_only_is_three_quarters_of_ram() -> None:
    assert capacity_bytes(survey(24 * GB)) == 18 * GB


def test_gpu_plus_spare_ram() -> None:
    s = survey(64 * GB, (GpuInfo("RTX", 24 * GB),))
    assert capacity_bytes(s) == 24 * GB + 30 * GB


def test_soc_counts_unified_memory_once() -> None:
    assert capacity_bytes(survey(32 * GB, (GpuInfo("Apple GPU", 0),), soc=True)) == 24 * GB


def test_max_vram_caps() -> None:
    assert capacity_bytes(survey(24 * GB), max_vram_gb=0.07) == 70_000_000
    assert capacity_bytes(survey(24 * GB), max_vram_gb=100) == 18 * GB


def test_rocm_csv() -> None:
    text = "device,VRAM Total Memory (B),VRAM Total Used Memory (B)\ncard0,17163091968,123\n"
    assert parse_rocm_smi_csv(text) == [GpuInfo("card0", 17163091968)]
    assert parse_rocm_smi_csv("") == []
