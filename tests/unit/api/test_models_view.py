"""/api/models from the status JSON and the catalog: warm first, then cold, with fit labels."""

from __future__ import annotations

from mesh_llm.api.models_view import fit_label, mesh_models
from mesh_llm.models import catalog_entries


def test_fit_labels_follow_the_size_ratios() -> None:
    assert fit_label(1.0, 1.2)[0] == "Likely comfortable"
    assert fit_label(1.0, 1.1)[0] == "Likely fits"
    assert fit_label(1.0, 0.9)[0] == "Possible with tradeoffs"
    assert fit_label(1.0, 0.5)[0] == "Likely too large"
    assert fit_label(None, 8.0)[0] == "Unknown"
    assert fit_label(1.0, 0.0)[0] == "Unknown"


def test_warm_models_with_their_nodes_then_the_catalog_cold() -> None:
    status = {
        "node_id": "aaaa",
        "token": "TOK",
        "my_vram_gb": 8.0,
        "hosted_models": ["SmolLM2-135M-Instruct"],
        "mesh_models": ["SmolLM2-135M-Instruct", "custom"],
        "local_models": [
            {"name": "SmolLM2-135M-Instruct", "size_bytes": 98_000_000, "ctx_size": 4096}
        ],
        "peers": [
            {"short_id": "bbbb", "hosted_models": ["custom", "SmolLM2-135M-Instruct"]},
            {"short_id": "cccc", "hosted_models": [], "serving_models": []},
        ],
    }
    models = mesh_models(status, catalog_entries())["mesh_models"]
    assert isinstance(models, list)
    first, second = models[0], models[1]
    assert (first["name"], first["status"], first["node_count"]) == (
        "SmolLM2-135M-Instruct",
        "warm",
        2,
    )
    assert first["active_nodes"] == ["aaaa", "bbbb"]
    assert first["size_gb"] == 0.098
    assert first["context_length"] == 4096
    assert first["fit_label"] == "Likely comfortable"
    assert first["run_command"] == "mesh-llm --join TOK --model SmolLM2-135M-Instruct"
    assert first["download_command"] == "mesh-llm models download SmolLM2-135M-Instruct"
    assert (second["name"], second["status"], second["node_count"]) == ("custom", "warm", 1)
    assert second["fit_label"] == "Unknown"
    assert second["download_command"] is None  # not in the catalog: nothing to download by name
    cold = [m for m in models[2:] if m["status"] == "cold"]
    assert cold
    assert len(cold) == len(models) - 2
    assert all(m["node_count"] == 0 for m in cold)
    assert "SmolLM2-135M-Instruct" not in {m["name"] for m in cold}
