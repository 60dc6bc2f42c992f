"""A local stand-in for the Hugging Face Hub's file endpoint, for offline download tests.

Serves files at ``/{repo}/resolve/{revision}/{filename}`` the way ``huggingface_hub``'s
``hf_hub_download`` expects (``HF_ENDPOINT=http://127.0.0.1:PORT``): a HEAD answers the file's
metadata (``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag`` as the content's sha256,
``X-Linked-Size``, ``Content-Length``), a GET the bytes (a ``Range: bytes=N-`` request from N).
Anything else is 404 with the ``X-Error-Code`` the hub client reads. Every request is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["COMMIT", "FakeHub", "serving_hub"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


@dataclass
class FakeHub:
    files: dict[str, Path]
    """``{repo}/{filename}`` -> the local file served for it (any revision)."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every request, in order."""
    port: int = 0
    _etags: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def etag(self, key: str) -> str:
        if key not in self._etags:
            digest = hashlib.sha256()
            with self.files[key].open("rb") as src:
                while block := src.read(CHUNK):
                    digest.update(block)
            self._etags[key] = digest.hexdigest()
        return self._etags[key]

    def served(self, method: str) -> list[str]:
        return [path for m, path in self.requests if m == method]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _file(self) -> tuple[str, Path] | None:
            hub.requests.append((self.command, self.path))
            path = self.path.split("?", 1)[0]
            parts = path.strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            key = f"{parts[0]}/{parts[1]}/{'/'.join(parts[4:])}"
            found = hub.files.get(key)
            return (key, found) if found is not None else None

        def _not_found(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _head(self, key: str, path: Path, status: int, length: int) -> None:
            etag = hub.etag(key)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def do_HEAD(self) -> None:
            found = self._file()
            if found is None:
                self._not_found()
                return
            key, path = found
            self._head(key, path, 200, path.stat().st_size)

        def do_GET(self) -> None:
            found = self._file()
            if found is None:
                self._not_found()
                return
            key, path = found
            size = path.stat().st_size
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-"):
                start = min(int(wanted[len("bytes=") : -1]), size)
            self._head(key, path, 206 if start else 200, size - start)
            with path.open("rb") as src, contextlib.suppress(ConnectionError):
                src.seek(start)
                while block := src.read(CHUNK):
                    self.wfile.write(block)

    return Handler


@contextlib.contextmanager
def serving_hub(files: dict[str, Path]) -> Iterator[FakeHub]:
    """Run a :class:`FakeHub` for ``files`` on 127.0.0.1 (a thread) until the block ends."""
    hub = FakeHub(files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-hf-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
