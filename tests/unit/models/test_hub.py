from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import errors as hf_errors
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import DownloadError
from mesh_llm.models import HfFileRef, hf_download, parse_hf_ref, parse_hf_url
from mesh_llm.models.hub import hf_cache_ggufs, hf_find_in_cache, split_part_names

from .conftest import Dirs, fake_hf_cache_file


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://huggingface.co/unsloth/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf",
            HfFileRef("unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", "main"),
        ),
        (
            "https://huggingface.co/unsloth/MiniMax-M2.5-GGUF/resolve/abc123/Q4_K_M/x-00001-of-00004.gguf",
            HfFileRef("unsloth/MiniMax-M2.5-GGUF", "Q4_K_M/x-00001-of-00004.gguf", "abc123"),
        ),
        (
            "https://huggingface.co/o/r/blob/main/m.gguf?download=true",
            HfFileRef("o/r", "m.gguf", "main"),
        ),
        ("https://huggingface.co/o/r/resolve/main/a%20b.gguf", HfFileRef("o/r", "a b.gguf")),
        ("https://example.com/o/r/resolve/main/m.gguf", None),
        ("https://huggingface.co/o/r/tree/main/m.gguf", None),
        ("https://huggingface.co/o/r/resolve/main", None),
        ("https://huggingface.co/o/r/resolve/main/../etc/passwd", None),
        ("ftp://huggingface.co/o/r/resolve/main/m.gguf", None),
    ],
)
def test_parse_hf_url(url: str, expected: HfFileRef | None) -> None:
    assert parse_hf_url(url) == expected


def test_parse_hf_url_accepts_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert parse_hf_url("https://hf-mirror.example/o/r/resolve/v1/m.gguf") == HfFileRef(
        "o/r", "m.gguf", "v1"
    )
    assert parse_hf_url("https://huggingface.co/o/r/resolve/main/m.gguf") is not None


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (
            "unsloth/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf",
            HfFileRef("unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf"),
        ),
        ("o/r@v2.0/sub/dir/m.gguf", HfFileRef("o/r", "sub/dir/m.gguf", "v2.0")),
        ("o/r@0123abcd/m.GGUF", HfFileRef("o/r", "m.GGUF", "0123abcd")),
        ("o/r/m.bin", None),
        ("o/m.gguf", None),
        ("m.gguf", None),
        ("/abs/o/r/m.gguf", None),
        ("./o/r/m.gguf", None),
        ("o/r/../m.gguf", None),
        ("o/r@/m.gguf", None),
    ],
)
def test_parse_hf_ref(ref: str, expected: HfFileRef | None) -> None:
    assert parse_hf_ref(ref) == expected


_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_rev = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)


@settings(deadline=None, max_examples=200)
@given(
    org=_name,
    repo=_name,
    rev=st.one_of(st.just("main"), _rev),
    dirs=st.lists(_name, max_size=2),
    stem=_name,
)
def test_ref_and_url_round_trip(org: str, repo: str, rev: str, dirs: list[str], stem: str) -> None:
    path = "/".join([*dirs, f"{stem}.gguf"])
    ref = HfFileRef(f"{org}/{repo}", path, rev)
    assert parse_hf_ref(str(ref)) == ref
    assert parse_hf_url(f"https://huggingface.co/{org}/{repo}/resolve/{rev}/{path}") == ref
    assert ref.filename == f"{stem}.gguf"


def test_split_part_names() -> None:
    assert split_part_names("Q4/x-00002-of-00003.gguf") == [
        "Q4/x-00001-of-00003.gguf",
        "Q4/x-00002-of-00003.gguf",
        "Q4/x-00003-of-00003.gguf",
    ]
    assert split_part_names("m.gguf") == ["m.gguf"]


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: records calls, writes files in the cache."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        cache = Path(kwargs["cache_dir"])
        repo_dir = cache / ("models--" + kwargs["repo_id"].replace("/", "--"))
        target = repo_dir / "snapshots" / ("f" * 40) / kwargs["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"GGUF")
        return str(target)


def test_hf_download_expands_split_parts(dirs: Dirs) -> None:
    hub = FakeHub()
    ref = HfFileRef("o/r", "Q4/x-00002-of-00003.gguf", "v1")
    path = hf_download(ref, progress=False, downloader=hub)
    assert [c["filename"] for c in hub.calls] == [
        "Q4/x-00001-of-00003.gguf",
        "Q4/x-00002-of-00003.gguf",
        "Q4/x-00003-of-00003.gguf",
    ]
    assert {c["repo_id"] for c in hub.calls} == {"o/r"}
    assert {c["revision"] for c in hub.calls} == {"v1"}
    assert {Path(c["cache_dir"]) for c in hub.calls} == {dirs.hf_cache}
    assert path.name == "x-00001-of-00003.gguf"
    # progress=False passes a tqdm class that is disabled
    bar = hub.calls[0]["tqdm_class"](total=10)
    assert bar.disable


def test_hf_download_progress_uses_default_bars(dirs: Dirs) -> None:
    hub = FakeHub()
    hf_download(HfFileRef("o/r", "m.gguf"), progress=True, downloader=hub)
    assert hub.calls[0]["tqdm_class"] is None


def _hub_error(cls: type[BaseException], message: str) -> BaseException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (_hub_error(hf_errors.RepositoryNotFoundError, "404"), "repository not found"),
        (_hub_error(hf_errors.GatedRepoError, "403"), "gated"),
        (_hub_error(hf_errors.RemoteEntryNotFoundError, "404"), "file not found"),
        (hf_errors.LocalEntryNotFoundError("offline"), "unreachable"),
        (hf_errors.HFValidationError("bad repo id"), "bad repo id"),
        (ConnectionResetError("reset"), "reset"),
    ],
)
def test_hub_errors_become_download_errors(dirs: Dirs, error: BaseException, message: str) -> None:
    with pytest.raises(DownloadError, match=message) as excinfo:
        hf_download(HfFileRef("o/r", "m.gguf"), downloader=FakeHub(error))
    assert excinfo.value.__cause__ is error
    assert "o/r/m.gguf" in str(excinfo.value)


def test_find_in_cache_and_listing(dirs: Dirs) -> None:
    link = fake_hf_cache_file(dirs.hf_cache, "o/r", "sub/m.gguf")
    assert hf_find_in_cache(HfFileRef("o/r", "sub/m.gguf")) == link
    assert hf_find_in_cache(HfFileRef("o/r", "m.gguf")) is None
    assert hf_find_in_cache(HfFileRef("o/other", "sub/m.gguf")) is None
    # A revision other than main must match its snapshot.
    assert hf_find_in_cache(HfFileRef("o/r", "sub/m.gguf", "0" * 40)) == link
    assert hf_find_in_cache(HfFileRef("o/r", "sub/m.gguf", "v9")) is None
    assert list(hf_cache_ggufs()) == [link]


def test_find_in_cache_requires_every_split_part(dirs: Dirs) -> None:
    fake_hf_cache_file(dirs.hf_cache, "o/r", "x-00001-of-00002.gguf")
    assert hf_find_in_cache(HfFileRef("o/r", "x-00001-of-00002.gguf")) is None
    fake_hf_cache_file(dirs.hf_cache, "o/r", "x-00002-of-00002.gguf")
    found = hf_find_in_cache(HfFileRef("o/r", "x-00002-of-00002.gguf"))
    assert found is not None
    assert found.name == "x-00001-of-00002.gguf"


def test_dangling_snapshot_links_are_ignored(dirs: Dirs) -> None:
    link = fake_hf_cache_file(dirs.hf_cache, "o/r", "m.gguf")
    link.resolve().unlink()
    assert list(hf_cache_ggufs()) == []
    assert hf_find_in_cache(HfFileRef("o/r", "m.gguf")) is None
