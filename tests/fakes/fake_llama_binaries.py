"""Stand-ins for a llama.cpp build in fast tests of the self-test.

Installed as ``llama-server`` (answers ``/health`` and ``/completion`` on ``--port``) and
``ggml-rpc-server`` (answers an RPC HELLO on ``-p``); the role comes from the file name.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def serve_http(port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"status": "ok"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._send({"content": "abcd", "tokens_predicted": 4})

        def log_message(self, *args: object) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def serve_rpc(port: int) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        while True:
            conn, _ = server.accept()
            with conn:
                head = conn.recv(9)
                if len(head) < 9:
                    continue
                _cmd, size = struct.unpack("<BQ", head)
                conn.recv(size)
                reply = bytes([3, 0, 0, 0]) + bytes(24)
                conn.sendall(struct.pack("<Q", len(reply)) + reply)


def main() -> None:
    args = sys.argv[1:]
    if Path(sys.argv[0]).name == "llama-server":
        serve_http(int(args[args.index("--port") + 1]))
    else:
        serve_rpc(int(args[args.index("-p") + 1]))


if __name__ == "__main__":
    main()
