"""Hardware and capacity probes, state-dir paths, platform quirks."""

from mesh_llm.system.paths import cache_dir, hf_hub_cache, models_dir, state_dir

__all__ = ["cache_dir", "hf_hub_cache", "models_dir", "state_dir"]
