"""Resumable downloads of plain (non-Hugging-Face) URLs into the hub cache's root.

Bytes go to ``<file>.part``; an interrupted download resumes with ``Range: bytes=N-`` (a 416 answer
or a server that ignores the range restarts it from zero). Failed attempts are retried with backoff
``min(3·2^k, 60)`` s within one hour. Before each attempt the disk must have the remaining bytes
plus 1 GB free. A finished file is renamed into place; an existing file under 1 MB counts as
missing.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from tqdm.auto import tqdm

from mesh_llm.errors import DownloadError
from mesh_llm.models.reach import ensure_reachable
from mesh_llm.system import hf_hub_cache

__all__ = ["download_url", "url_filename"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
TOTAL_TIMEOUT_S = 3600.0
MAX_ATTEMPTS = 6
MIN_COMPLETE_BYTES = 1_000_000
FREE_SPACE_MARGIN = 1_000_000_000
_CHUNK = 1 << 20


class _IncompleteError(Exception):
    """The connection ended before the announced size; retried like a network error."""


def url_filename(url: str) -> str:
    """The file name a URL downloads to: the last path segment."""
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DownloadError(f"cannot derive a file name from {url}")
    return name


def _backoff(attempt: int) -> float:
    return float(min(3 * 2**attempt, 60))


def _total_size(resp: BinaryIO, status: int, start: int) -> int | None:
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    if status == 206:
        content_range = headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
    length = headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + (start if status == 206 else 0)
    return None


def _attempt(url: str, part: Path, *, progress: bool) -> None:
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mesh-llm"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        resp = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            log.info("%s: server refused the resume range; restarting", part.name)
            part.unlink()
            raise
        raise
    with resp:
        status = resp.status
        if status == 200 and start:
            start = 0  # range ignored: start over
        total = _total_size(resp, status, start)
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if free < total - start + FREE_SPACE_MARGIN:
                raise DownloadError(
                    f"not enough disk space for {part.name}: need {total - start} bytes "
                    f"plus 1 GB, {free} free"
                )
        with (
            part.open("ab" if start else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise _IncompleteError(f"got {part.stat().st_size} of {total} bytes")


def download_url(
    url: str,
    dest_dir: Path | None = None,
    *,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``<dest_dir>/<file name>`` (default: the hub cache's root), resuming."""
    directory = dest_dir or hf_hub_cache()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / url_filename(url)
    if target.is_file() and target.stat().st_size >= MIN_COMPLETE_BYTES:
        return target
    ensure_reachable(url, target.name)  # offline: one line now, not an hour of retries
    part = target.with_name(target.name + ".part")
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    last: BaseException | None = None
    for attempt in range(MAX_ATTEMPTS):
        try:
            _attempt(url, part, progress=progress)
            part.replace(target)
            return target
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            last = exc
            if 400 <= exc.code < 500 and exc.code not in (408, 416, 429):
                break
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
            http.client.HTTPException,
            _IncompleteError,
        ) as exc:
            last = exc
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc}") from exc
        delay = _backoff(attempt)
        if attempt + 1 == MAX_ATTEMPTS or time.monotonic() + delay > deadline:
            break
        log.warning("download of %s failed (%s); retrying in %.0f s", url, last, delay)
        sleep(delay)
    with contextlib.suppress(OSError):
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
    raise DownloadError(f"download of {url} failed: {last}") from last
