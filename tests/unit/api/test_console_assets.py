"""The console's files: shipped in the package, small, served with the right types and caching."""

from __future__ import annotations

import asyncio
import gzip
from importlib import resources

from mesh_llm import __version__
from mesh_llm.api import ChangeHub, ManagementServer

ASSET_BUDGET_GZIP = 1024 * 1024


def test_assets_fit_the_budget_compressed() -> None:
    assets = resources.files("mesh_llm.api").joinpath("assets")
    files = [f for f in assets.iterdir() if f.is_file()]
    names = {f.name for f in files}
    assert {"index.html", "app.js", "app.css", "md.js"} <= names
    total = sum(len(gzip.compress(f.read_bytes(), 9)) for f in files)
    assert total <= ASSET_BUDGET_GZIP


async def _get(port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_pages_and_assets_are_served() -> None:
    server = ManagementServer(
        host="127.0.0.1",
        port=0,
        status=lambda: {"mesh_models": ["m"], "my_vram_gb": 8.0, "token": "T", "peers": []},
        runtime_models=lambda: {"models": []},
        runtime_processes=lambda: {"processes": []},
        hub=ChangeHub(),
    )
    await server.start()
    try:
        for path in ("/", "/dashboard", "/chat", "/chat/abc"):
            head, body = await _get(server.port, path)
            assert head.startswith(b"HTTP/1.1 200"), path
            assert f"/assets/app.js?v={__version__}".encode() in body
        head, body = await _get(server.port, "/assets/app.js?v=1")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/javascript" in head
        assert b"immutable" in head
        assert b"EventSource" in body
        head, _ = await _get(server.port, "/assets/app.css")
        assert b"text/css" in head
        for bad in ("/assets/../server.py", "/assets/nope.js", "/assets/", "/assets/.x.js"):
            head, _ = await _get(server.port, bad)
            assert head.startswith(b"HTTP/1.1 404"), bad
        head, body = await _get(server.port, "/chatty")
        assert head.startswith(b"HTTP/1.1 404")
    finally:
        await server.close()
