"""Direct (non-Hub) downloads against a loopback HTTP server."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mesh_llm.errors import DownloadError
from mesh_llm.models import direct
from mesh_llm.models.direct import download_url, url_filename

BODY = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class ServerState:
    honour_range: bool = True
    refuse_range: bool = False
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    status: int = 200
    ranges: list[str | None] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    state: ClassVar[ServerState]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        st = self.state
        rng = self.headers.get("Range")
        st.ranges.append(rng)
        if st.status != 200:
            self.send_error(st.status)
            return
        start = 0
        if rng and st.refuse_range:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng and st.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        else:
            self.send_response(200)
        body = BODY[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st.cut_after is not None:
            self.wfile.write(body[: st.cut_after])
            st.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    """A client that stops reading (a failed size or space check) is expected: no traceback on
    stderr for it, which would land in the middle of the test run's output. Any other error in a
    handler is kept and fails the test."""

    errors: list[BaseException]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError) and exc is not None:
            self.errors.append(exc)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = Server(("127.0.0.1", 0), handler)
    httpd.errors = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/files/model.gguf", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert httpd.errors == []


def _no_sleep(delays: list[float]) -> Any:
    return delays.append


def test_url_filename() -> None:
    assert url_filename("https://x.org/a/b/m%20x.gguf?sig=1") == "m x.gguf"
    with pytest.raises(DownloadError):
        url_filename("https://x.org/")


def test_full_download(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    path = download_url(url, tmp_path, progress=False)
    assert path == tmp_path / "model.gguf"
    assert path.read_bytes() == BODY
    assert state.ranges == [None]
    assert not (tmp_path / "model.gguf.part").exists()
    # Present and >= 1 MB: not fetched again.
    assert download_url(url, tmp_path, progress=False) == path
    assert state.ranges == [None]


def test_resumes_from_part_file(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    (tmp_path / "model.gguf.part").write_bytes(BODY[:1000])
    path = download_url(url, tmp_path, progress=False)
    assert path.read_bytes() == BODY
    assert state.ranges == ["bytes=1000-"]


def test_server_ignoring_range_restarts(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    state.honour_range = False
    (tmp_path / "model.gguf.part").write_bytes(b"x" * 1000)
    assert download_url(url, tmp_path, progress=False).read_bytes() == BODY


def test_416_restarts_from_scratch(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    state.refuse_range = True
    (tmp_path / "model.gguf.part").write_bytes(b"x" * 1000)
    delays: list[float] = []
    path = download_url(url, tmp_path, progress=False, sleep=_no_sleep(delays))
    assert path.read_bytes() == BODY
    assert state.ranges == ["bytes=1000-", None]
    assert delays == [3.0]


def test_cut_connection_is_retried_and_resumed(
    tmp_path: Path, server: tuple[str, ServerState]
) -> None:
    url, state = server
    state.cut_after = 300_000
    delays: list[float] = []
    path = download_url(url, tmp_path, progress=False, sleep=_no_sleep(delays))
    assert path.read_bytes() == BODY
    assert state.ranges == [None, "bytes=300000-"]
    assert delays == [3.0]


def test_not_found_is_not_retried(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    state.status = 404
    delays: list[float] = []
    with pytest.raises(DownloadError, match="404"):
        download_url(url, tmp_path, progress=False, sleep=_no_sleep(delays))
    assert delays == []
    assert len(state.ranges) == 1


def test_server_errors_back_off_then_give_up(
    tmp_path: Path, server: tuple[str, ServerState]
) -> None:
    url, state = server
    state.status = 503
    delays: list[float] = []
    with pytest.raises(DownloadError, match="503"):
        download_url(url, tmp_path, progress=False, sleep=_no_sleep(delays))
    assert delays == [3.0, 6.0, 12.0, 24.0, 48.0]
    assert len(state.ranges) == direct.MAX_ATTEMPTS


def test_requires_free_space(
    tmp_path: Path, server: tuple[str, ServerState], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server

    class Usage:
        free = 5_000_000

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(DownloadError, match="not enough disk space"):
        download_url(url, tmp_path, progress=False)
