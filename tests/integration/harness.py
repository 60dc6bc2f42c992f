"""Run real ``mesh-llm`` processes for end-to-end tests.

Each node gets its own ``MESH_LLM_HOME`` and free ports; its stdout/stderr go to a log file
whose tail is attached to assertion failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc})"
    )


def http_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        exc.close()  # an error response holds its socket until closed
        raise


def post_json(url: str, payload: object, timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` as JSON: the status and the JSON body, error statuses included."""
    req = urllib.request.Request(url, json.dumps(payload).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class MeshNode:
    """One ``mesh-llm`` subprocess."""

    name: str
    home: Path
    args: list[str]
    api_port: int = field(default_factory=free_port)
    console_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS]
    host: str = "127.0.0.1"
    """Where the test reaches the API and console (a namespaced node's address: --listen-all)."""
    separate_stderr: bool = False
    """Write stderr to ``stderr_path`` instead of into the log with stdout."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    @property
    def stderr_path(self) -> Path:
        return self.home / "stderr.log" if self.separate_stderr else self.log_path

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def console(self) -> str:
        return f"http://{self.host}:{self.console_port}"

    def start(self) -> MeshNode:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MESH_LLM_HOME": str(self.home), **self.env}
        # Tests stay offline: never iroh's public relays, QUIC on loopback unless told otherwise.
        offline = [] if "--no-relay" in self.args else ["--no-relay"]
        if "--bind-ip" not in self.args:
            offline += ["--bind-ip", "127.0.0.1"]
        argv = [
            *self.prefix, sys.executable, "-m", "mesh_llm",
            "--port", str(self.api_port), "--console", str(self.console_port),
            *self.args, *offline,
        ]  # fmt: skip
        with self.log_path.open("ab") as log, self.stderr_path.open("ab") as err:
            stderr = err if self.separate_stderr else subprocess.STDOUT
            self.proc = subprocess.Popen(argv, stdout=log, stderr=stderr, env=env)
        return self

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        if self.separate_stderr:
            text += self.stderr_text()
        return f"--- {self.name} log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.console}/api/status")
        return result

    def model_ids(self) -> list[str]:
        data = http_json(f"{self.api}/v1/models")
        return [m["id"] for m in data["data"]]

    def wait_models(self, expected: set[str], timeout: float = 120.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            return expected <= set(self.model_ids())

        try:
            wait_for(ready, timeout, f"{self.name} to list {sorted(expected)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


@contextlib.contextmanager
def running(node: MeshNode) -> Iterator[MeshNode]:
    node.start()
    try:
        yield node
    finally:
        node.stop()


def smollm_path() -> Path:
    """The bundled default model (fetched into the model store by `make test`'s set-up)."""
    from mesh_llm.models import resolve_model

    return Path(resolve_model("SmolLM2-135M-Instruct").path)
