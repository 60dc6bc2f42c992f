"""/api/models from the status JSON and the catalog: warm first, then cold, with fit labels.

The shape tests feed it the status the real renderer (runtime/status) makes from a node view,
so a key renamed on one side shows up here."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from mesh_llm.api.models_view import fit_label, mesh_models
from mesh_llm.mesh import PeerView
from mesh_llm.models import catalog_entries
from mesh_llm.network import RoutingSnapshot, Target
from mesh_llm.protocol import NodeRole, PeerId
from mesh_llm.runtime import status as render
from mesh_llm.runtime.view import DemandRow, OnDiskRow, PeerRow
from tests.unit.runtime.test_status import runner, view


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


# -- the shapes users rely on (surface.md §3), from the real /api/status renderer ------------

SPEC_KEYS = {
    "name",
    "display_name",
    "status",
    "node_count",
    "mesh_vram_gb",
    "size_gb",
    "architecture",
    "context_length",
    "quantization",
    "description",
    "multimodal",
    "vision",
    "audio",
    "reasoning",
    "tool_use",
    "moe",
    "draft_model",
    "request_count",
    "last_active_secs_ago",
    "active_nodes",
    "fit_label",
    "fit_detail",
    "download_command",
    "run_command",
    "auto_command",
}
"""Every key of a ``mesh_models[]`` entry in the reference, less its optional ``*_status``,
``expert_count``/``used_expert_count`` and ``source_*`` ones."""
BEYOND = {"on_disk_nodes", "load_command", "embedding"}
"""Keys this port adds (cold starts, runtime loads, embedding models)."""
BOOLS = ("multimodal", "vision", "audio", "reasoning", "tool_use", "moe", "embedding")

ME, PEER = PeerId(bytes([2]) * 32), PeerId(bytes([3]) * 32)


def _node_status(**kw: object) -> dict[str, object]:
    """``/api/status`` of a node serving ``m`` (a peer serves ``x`` too), rendered for real."""
    peer = PeerView(
        PEER, NodeRole.HOST, ("x",), ("x",), 5_000_000_000, "0.1.0", 12, True, True, 1.0
    )
    routing = RoutingSnapshot(
        targets={
            "m": [Target("m", "local:8001", 8001, None, 4096)],
            "x": [Target("x", "peer:0303", None, PEER, 8192)],
        },
        serving=True,
    )
    fields: dict[str, object] = {
        "node_id": ME.hex(),
        "token": "tok",
        "peers": (PeerRow(peer),),
        "routing": routing,
        "now": 2000.0,
        "demand": (
            DemandRow("m", 7, 1990),
            DemandRow("SmolLM2-135M-Instruct", 3, 1000),
            DemandRow("ondisk", 2, 2001),  # a clock ahead of ours: never negative
        ),
        "on_disk": (
            OnDiskRow("ondisk", 600_000_000, ("self", PEER[:5].hex())),
            OnDiskRow("m", 2_000_000_000, ("self",)),
        ),
    }
    fields.update(kw)
    return render.status(view(runner("m"), **fields))


def _by_name(status: Mapping[str, object]) -> dict[str, dict[str, object]]:
    models = mesh_models(status, catalog_entries())["mesh_models"]
    assert isinstance(models, list)
    names = [m["name"] for m in models]
    assert len(names) == len(set(names)), "a model listed twice"
    return {str(m["name"]): m for m in models}


def test_every_entry_has_the_reference_keys_with_their_types() -> None:
    models = mesh_models(_node_status(), catalog_entries())["mesh_models"]
    assert isinstance(models, list)
    json.dumps(models)  # served as JSON as it is
    for entry in models:
        assert set(entry) == SPEC_KEYS | BEYOND, entry["name"]
        assert entry["status"] in ("warm", "cold")
        assert entry["display_name"] == entry["name"]
        assert isinstance(entry["node_count"], int)
        assert all(isinstance(entry[key], bool) for key in BOOLS), entry["name"]
        assert isinstance(entry["active_nodes"], list)
        assert isinstance(entry["on_disk_nodes"], list)
        assert entry["size_gb"] is None or isinstance(entry["size_gb"], float)
        assert isinstance(entry["fit_label"], str)
        assert isinstance(entry["fit_detail"], str)
        assert entry["fit_detail"]
        for key in ("run_command", "auto_command", "load_command"):
            assert isinstance(entry[key], str), (entry["name"], key)


def test_warm_first_in_mesh_order_then_on_disk_then_the_catalog() -> None:
    models = mesh_models(_node_status(), catalog_entries())["mesh_models"]
    assert isinstance(models, list)
    names = [m["name"] for m in models]
    assert names[:3] == ["m", "x", "ondisk"]
    assert [m["status"] for m in models[:2]] == ["warm", "warm"]
    assert all(m["status"] == "cold" for m in models[2:])
    catalog = [e.name for e in catalog_entries() if not e.is_draft]
    assert names[3:] == catalog  # every non-draft catalog model, in catalog order
    drafts = {e.name for e in catalog_entries() if e.is_draft}
    assert drafts
    assert not drafts & set(names)


def test_warm_models_name_the_nodes_serving_them() -> None:
    models = _by_name(_node_status())
    me, peer = ME.hex()[:10], PEER[:5].hex()
    assert models["m"]["active_nodes"] == [me]
    assert models["m"]["node_count"] == 1
    assert models["x"]["active_nodes"] == [peer]
    assert models["x"]["node_count"] == 1
    # The local model's figures come from its llama-server (runner), not the disk or catalog.
    assert models["m"]["size_gb"] == 2.0
    assert models["m"]["context_length"] == 4096
    assert models["m"]["architecture"] == "llama"
    assert models["m"]["quantization"] == "Q8_0"
    # A peer's model: what this node cannot know stays null rather than guessed.
    assert models["x"]["size_gb"] is None
    assert models["x"]["architecture"] is None
    assert models["x"]["fit_label"] == "Unknown"


def test_demand_counts_and_ages_come_from_the_demand_map() -> None:
    models = _by_name(_node_status())
    assert (models["m"]["request_count"], models["m"]["last_active_secs_ago"]) == (7, 10)
    smol = models["SmolLM2-135M-Instruct"]
    assert (smol["request_count"], smol["last_active_secs_ago"]) == (3, 1000)
    assert (models["ondisk"]["request_count"], models["ondisk"]["last_active_secs_ago"]) == (2, 0)
    never = models["Qwen3-8B-Q4_K_M"]
    assert never["request_count"] is None  # no request in the window: absent, not zero
    assert never["last_active_secs_ago"] is None


def test_a_model_on_some_disk_is_cold_with_its_nodes_and_a_load_command() -> None:
    models = _by_name(_node_status())
    disk = models["ondisk"]
    assert disk["status"] == "cold"
    assert disk["node_count"] == 0
    assert disk["active_nodes"] == []
    assert disk["on_disk_nodes"] == ["self", PEER[:5].hex()]
    assert disk["size_gb"] == 0.6  # from the on-disk listing: not in the catalog
    assert disk["download_command"] is None  # not a catalog name
    assert disk["load_command"] == "mesh-llm load ondisk"
    assert disk["run_command"] == "mesh-llm --join tok --model ondisk"
    assert disk["auto_command"] == "mesh-llm --model ondisk"
    assert disk["description"] is None
    # A warm model on this node's disk lists its disk too.
    assert models["m"]["on_disk_nodes"] == ["self"]
    assert models["SmolLM2-135M-Instruct"]["on_disk_nodes"] == []


def test_catalog_models_carry_size_description_download_and_capabilities() -> None:
    models = _by_name(_node_status())
    entries = {e.name: e for e in catalog_entries()}
    smol = models["SmolLM2-135M-Instruct"]
    assert smol["size_gb"] == round(entries["SmolLM2-135M-Instruct"].size_bytes / 1e9, 3)
    assert smol["description"] == entries["SmolLM2-135M-Instruct"].description
    assert smol["download_command"] == "mesh-llm models download SmolLM2-135M-Instruct"
    assert smol["tool_use"] is True  # bundled tool-calling template
    moe = next(e for e in entries.values() if e.moe and not e.is_draft)
    assert models[moe.name]["moe"] is True
    vision = next(e for e in entries.values() if e.mmproj and not e.is_draft)
    assert models[vision.name]["vision"] is True
    assert models[vision.name]["multimodal"] is True
    with_draft = next(e for e in entries.values() if e.draft and not e.is_draft)
    assert models[with_draft.name]["draft_model"] == with_draft.draft


def test_fit_labels_are_against_this_nodes_offered_memory() -> None:
    # view() offers 4 GB here.
    models = _by_name(_node_status())
    assert models["SmolLM2-135M-Instruct"]["fit_label"] == "Likely comfortable"
    assert models["SmolLM2-135M-Instruct"]["fit_detail"] == "0.10 GB model, 4.00 GB offered here"
    assert models["ondisk"]["fit_label"] == "Likely comfortable"
    assert models["m"]["fit_label"] == "Likely comfortable"  # 2 GB x 1.2 <= 4 GB
    assert models["MiniMax-M2.5-Q4_K_M"]["fit_label"] == "Likely too large"
    # A client offers nothing: no label is a guess.
    client = _by_name(_node_status(capacity=0))
    assert client["SmolLM2-135M-Instruct"]["fit_label"] == "Unknown"
    assert client["SmolLM2-135M-Instruct"]["fit_detail"] == "no size or memory figure"


@pytest.mark.parametrize(
    ("vram", "label"),
    [
        (1.2, "Likely comfortable"),
        (1.19, "Likely fits"),
        (1.05, "Likely fits"),
        (1.04, "Possible with tradeoffs"),
        (0.8, "Possible with tradeoffs"),
        (0.79, "Likely too large"),
    ],
)
def test_fit_label_boundaries(vram: float, label: str) -> None:
    assert fit_label(1.0, vram) == (label, f"1.00 GB model, {vram:.2f} GB offered here")


def test_run_command_without_a_token_shows_a_placeholder() -> None:
    models = _by_name(_node_status(token=None))
    assert models["m"]["run_command"] == "mesh-llm --join TOKEN --model m"


def test_a_warm_model_whose_servers_are_not_known_counts_one_node() -> None:
    # Listed as served (a route exists) before any announcement said by whom.
    status = {"mesh_models": ["m"], "hosted_models": [], "peers": []}
    (entry,) = [m for m in _by_name(status).values() if m["name"] == "m"]
    assert entry["status"] == "warm"
    assert entry["node_count"] == 1
    assert entry["active_nodes"] == []


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"mesh_models": None, "peers": None, "demand": None, "models_on_disk": None},
        {"mesh_models": "m", "peers": "p", "demand": "d", "models_on_disk": "o"},
        {"peers": [1, None, {"short_id": None, "hosted_models": "x"}], "demand": [3, {}]},
        {"my_vram_gb": "lots", "local_models": [None, {"name": "m", "size_bytes": "big"}]},
    ],
)
def test_odd_status_documents_give_the_catalog_cold_never_an_error(
    status: dict[str, object],
) -> None:
    models = mesh_models(status, catalog_entries())["mesh_models"]
    assert isinstance(models, list)
    catalog = [e.name for e in catalog_entries() if not e.is_draft]
    assert [m["name"] for m in models if m["status"] == "cold"][: len(catalog)] == catalog
