"""The reachability probe: one clear error line within seconds when a download's server is away."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from mesh_llm.errors import DownloadError
from mesh_llm.models import hf_download
from mesh_llm.models.hub import HfFileRef
from mesh_llm.models.reach import ensure_reachable

from .conftest import Dirs


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Recorder:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.calls: list[tuple[tuple[str, int], float]] = []
        self.exc = exc

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        self.calls.append((address, timeout))
        if self.exc is not None:
            raise self.exc
        return socket.socket()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_refused_connection_is_one_line(no_proxy: None) -> None:
    port = _closed_port()
    with pytest.raises(DownloadError) as excinfo:
        ensure_reachable(f"http://127.0.0.1:{port}/x.gguf", "x.gguf")
    text = str(excinfo.value)
    assert text.startswith(f"cannot reach 127.0.0.1:{port} to download x.gguf (")
    assert "refused" in text.lower()
    assert "\n" not in text


def test_name_lookup_and_timeout_are_named(no_proxy: None) -> None:
    lookup = _Recorder(socket.gaierror(-2, "Name or service not known"))
    with pytest.raises(DownloadError, match=r"name lookup failed: Name or service not known"):
        ensure_reachable("https://huggingface.co", "org/repo/f.gguf", connect=lookup)
    assert lookup.calls == [(("huggingface.co", 443), 5.0)]
    slow = _Recorder(TimeoutError())
    with pytest.raises(DownloadError, match=r"no answer within 2 s"):
        ensure_reachable("http://example.test:8080/a", "a", timeout=2.0, connect=slow)
    assert slow.calls == [(("example.test", 8080), 2.0)]


def test_reachable_server_passes(no_proxy: None) -> None:
    ok = _Recorder()
    ensure_reachable("https://hub.example.test/", "f", connect=ok)
    assert ok.calls == [(("hub.example.test", 443), 5.0)]


def test_a_proxy_is_probed_instead(no_proxy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    seen = _Recorder(ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(DownloadError, match=r"cannot reach the proxy 127.0.0.1:3128"):
        ensure_reachable("https://huggingface.co/x", "x", connect=seen)
    assert seen.calls[0][0] == ("127.0.0.1", 3128)
    monkeypatch.setenv("no_proxy", "huggingface.co")
    bypass = _Recorder()
    ensure_reachable("https://huggingface.co/x", "x", connect=bypass)
    assert bypass.calls[0][0] == ("huggingface.co", 443)


def test_hub_download_fails_fast_without_retries(
    dirs: Dirs, no_proxy: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        hf_download(HfFileRef("org/repo", "model-Q4_K_M.gguf"), progress=False)
    assert time.monotonic() - started < 3
    assert str(excinfo.value).startswith(
        f"cannot reach 127.0.0.1:{port} to download org/repo/model-Q4_K_M.gguf ("
    )
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_a_replaced_downloader_is_not_probed(dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> str:
        calls.append(kwargs)
        raise OSError("offline")

    with pytest.raises(DownloadError, match="offline"):
        hf_download(HfFileRef("org/repo", "m.gguf"), progress=False, downloader=fake)
    assert len(calls) == 1
