"""Hugging Face references, the hub cache, and downloads through ``huggingface_hub``.

``huggingface_hub`` honours ``HF_ENDPOINT``, ``HF_TOKEN`` and offline mode by itself, resumes
partial downloads and shows progress bars. Files land in the hub cache (``system.hf_hub_cache()``)
under ``models--<org>--<repo>/snapshots/<commit>/<path>``. Hub errors become
:class:`~mesh_llm.errors.DownloadError`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import huggingface_hub
from huggingface_hub import errors as hf_errors
from tqdm.auto import tqdm

from mesh_llm.errors import DownloadError
from mesh_llm.models.reach import ensure_reachable
from mesh_llm.system import hf_hub_cache

__all__ = [
    "HfFileRef",
    "hf_cache_ggufs",
    "hf_download",
    "hf_find_in_cache",
    "parse_hf_ref",
    "parse_hf_url",
    "split_part_names",
]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF_RE = re.compile(rf"^(?P<org>{_NAME})/(?P<repo>{_NAME})(?:@(?P<rev>[^/@\s]+))?/(?P<path>.+)$")
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

#: ``hf_hub_download``'s signature; tests swap it through :func:`hf_download`'s ``downloader``.
Downloader = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class HfFileRef:
    """One file in a Hugging Face model repository."""

    repo_id: str
    path: str
    revision: str = "main"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{self.repo_id}{rev}/{self.path}"


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _valid_path(path: str) -> bool:
    segments = path.split("/")
    return all(s and s not in (".", "..") for s in segments)


def parse_hf_url(url: str) -> HfFileRef | None:
    """``https://huggingface.co/<org>/<repo>/(resolve|blob)/<rev>/<path>`` → ref, else ``None``.

    URLs on ``$HF_ENDPOINT`` are accepted too. A query string (``?download=true``) is ignored.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        return None
    hosts = {urlsplit(DEFAULT_ENDPOINT).netloc, urlsplit(_endpoint()).netloc}
    if parts.netloc.lower() not in hosts:
        return None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if len(segments) < 5 or segments[2] not in ("resolve", "blob"):
        return None
    org, repo, _, rev, *rest = segments
    path = "/".join(rest)
    if not (re.fullmatch(_NAME, org) and re.fullmatch(_NAME, repo) and _valid_path(path)):
        return None
    return HfFileRef(repo_id=f"{org}/{repo}", path=path, revision=rev)


def parse_hf_ref(ref: str) -> HfFileRef | None:
    """``org/repo[@rev]/path/to/file.gguf`` → ref; ``None`` when ``ref`` has another shape."""
    match = _REF_RE.match(ref.strip())
    if match is None or not match["path"].lower().endswith(".gguf"):
        return None
    if not _valid_path(match["path"]):
        return None
    return HfFileRef(
        repo_id=f"{match['org']}/{match['repo']}",
        path=match["path"],
        revision=match["rev"] or "main",
    )


def split_part_names(path: str) -> list[str]:
    """All part paths of a split GGUF path (``x-00001-of-00003.gguf`` → three); else ``[path]``."""
    head, _, name = path.rpartition("/")
    match = _SPLIT_RE.match(name)
    if match is None:
        return [path]
    count = int(match["count"])
    prefix = f"{head}/" if head else ""
    return [f"{prefix}{match['prefix']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]


class _SilentTqdm(tqdm):  # type: ignore[misc]  # tqdm is untyped here (follow_imports=skip)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


_HUB_DOWNLOAD = huggingface_hub.hf_hub_download

_HUB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, disk errors
    ValueError,  # HFValidationError: a malformed repo id or revision
    hf_errors.EntryNotFoundError,
    # transport errors of the hub's HTTP client (re-exported by huggingface_hub.errors)
    getattr(hf_errors, "HTTPError", OSError),
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, hf_errors.GatedRepoError):
        return "the repository is gated: accept its licence on the Hub and set HF_TOKEN"
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return "repository not found (or private: set HF_TOKEN)"
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return "revision not found"
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return "file not found in the repository"
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return "the Hub is unreachable and the file is not in the local cache"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def hf_download(
    ref: HfFileRef,
    *,
    progress: bool = True,
    expand_splits: bool = True,
    downloader: Downloader | None = None,
) -> Path:
    """Download ``ref`` (and, for a split part, every sibling part) into the hub cache.

    Returns the local path of the first part. Files already in the cache are not fetched again.
    An unreachable Hub is one error line within seconds, not the hub client's retries.
    """
    fetch = downloader or huggingface_hub.hf_hub_download
    paths = split_part_names(ref.path) if expand_splits else [ref.path]
    # The probe cuts the real hub client's retries short; a replaced downloader has none.
    if fetch is _HUB_DOWNLOAD and not huggingface_hub.constants.is_offline_mode():
        ensure_reachable(_endpoint(), f"{ref.repo_id}/{paths[0]}")
    local: list[Path] = []
    for part in paths:
        log.info("downloading %s/%s (revision %s)", ref.repo_id, part, ref.revision)
        try:
            result = fetch(
                repo_id=ref.repo_id,
                filename=part,
                revision=ref.revision,
                cache_dir=hf_hub_cache(),
                tqdm_class=None if progress else _SilentTqdm,
            )
        except _HUB_ERRORS as exc:
            raise DownloadError(
                f"download of {ref.repo_id}/{part} (revision {ref.revision}) from {_endpoint()} "
                f"failed: {_describe(exc)}"
            ) from exc
        local.append(Path(result))
    return local[0]


def _snapshot_dirs(cache: Path) -> Iterator[Path]:
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--"))
    except OSError:
        return
    for repo in repos:
        snapshots = repo / "snapshots"
        if snapshots.is_dir():
            yield from sorted(p for p in snapshots.iterdir() if p.is_dir())


def _walk_ggufs(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(".gguf"):
                path = Path(dirpath) / name
                if path.is_file():  # a dangling symlink is a blob still downloading or deleted
                    yield path


def hf_cache_ggufs(cache: Path | None = None) -> Iterator[Path]:
    """Every ``.gguf`` file in the hub cache's snapshots (symlinks into ``blobs/``, unresolved)."""
    for snapshot in _snapshot_dirs(cache or hf_hub_cache()):
        yield from _walk_ggufs(snapshot)


def hf_find_in_cache(ref: HfFileRef, cache: Path | None = None) -> Path | None:
    """The cached copy of ``ref``, or ``None``; every split part must be there.

    The snapshot the revision points at (``refs/<rev>``, or a commit hash) is preferred; for
    ``main`` any snapshot of the repository will do, as the hub keeps one per commit it has seen.
    """
    repo_dir = (cache or hf_hub_cache()) / ("models--" + ref.repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    pinned = ref.revision
    ref_file = repo_dir / "refs" / ref.revision
    if ref_file.is_file():
        try:
            pinned = ref_file.read_text(encoding="utf-8").strip()
        except OSError:
            pinned = ref.revision
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    ordered = [p for p in found if p.name == pinned]
    if ref.revision == "main":
        ordered += [p for p in found if p.name != pinned]
    names = split_part_names(ref.path)
    for snapshot in ordered:
        if all((snapshot / name).is_file() for name in names):
            return snapshot / names[0]
    return None
