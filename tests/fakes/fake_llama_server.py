"""A stand-in for llama-server in fast tests: answers /health on --port.

Behaviour knobs (environment):
- FAKE_LLAMA_LOAD_S: seconds of answering 503 "loading" before 200 (default 0)
- FAKE_LLAMA_EXIT_AFTER_S: exit(3) after this many seconds (simulates a crash)
- FAKE_LLAMA_CRASH_FILE: if this file exists at start, exit(2) at once (crash loop)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1])
    crash_file = os.environ.get("FAKE_LLAMA_CRASH_FILE")
    if crash_file and os.path.exists(crash_file):
        sys.exit(2)
    load_s = float(os.environ.get("FAKE_LLAMA_LOAD_S", "0"))
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = time.monotonic() - started >= load_s
            body = b'{"status":"ok"}' if ok else b'{"error":"loading"}'
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    exit_after = os.environ.get("FAKE_LLAMA_EXIT_AFTER_S")
    if exit_after:
        threading.Timer(float(exit_after), lambda: os._exit(3)).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
