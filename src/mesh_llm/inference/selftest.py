"""Prove a llama.cpp build on this machine before a node uses it.

``llama-server`` loads a tiny model that mesh-llm writes itself (a 2-layer llama with Q4_1
weights, the quantisation of the bundled SmolLM2 and the one whose AMX kernel crashed) and
generates a few tokens; ``rpc-server`` answers an RPC HELLO. Both on 127.0.0.1, each bounded by a
timeout. A child killed by a signal is reported by the signal's name (``SIGSEGV``), with its log.

This is I/O: it starts processes. It is called from worker threads (``asyncio.to_thread``) and
from ``mesh-llm backend install``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import gguf
import numpy as np

from mesh_llm.inference.children import describe_exit
from mesh_llm.inference.supervisor import free_port

__all__ = [
    "SELFTEST_MODEL_VERSION",
    "SelfTestResult",
    "run_selftest",
    "write_selftest_model",
]

SELFTEST_MODEL_VERSION: Final = 1
LOAD_TIMEOUT_S: Final = 60.0
GENERATE_TIMEOUT_S: Final = 30.0
RPC_TIMEOUT_S: Final = 15.0
POLL_S: Final = 0.05
STOP_GRACE_S: Final = 5.0
TOKENS: Final = 4
RPC_HELLO: Final = 14
RPC_HELLO_REQUEST_SIZE: Final = 24
N_EMBD: Final = 64
N_HEAD: Final = 2
N_FF: Final = 128
N_LAYERS: Final = 2


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    """Whether the binaries work here; ``detail`` says what failed (or what passed)."""

    ok: bool
    seconds: float
    detail: str
    log_path: Path


class _SelfTestFailedError(Exception):
    """One step of the self-test failed; the message is the user-facing reason."""


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """A byte-fallback SentencePiece vocabulary: <unk> <s> </s> and the 256 byte tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [
        int(gguf.TokenType.UNKNOWN),
        int(gguf.TokenType.CONTROL),
        int(gguf.TokenType.CONTROL),
    ] + [int(gguf.TokenType.BYTE)] * 256
    return tokens, scores, types


def write_selftest_model(path: Path) -> Path:
    """Write the self-test model (about 100 KB) to ``path`` atomically; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    gguf_log = logging.getLogger("gguf.gguf_writer")
    level = gguf_log.level
    gguf_log.setLevel(logging.WARNING)  # its INFO lines would interleave with our progress
    try:
        _write_model(tmp)
    finally:
        gguf_log.setLevel(level)
    tmp.replace(path)
    return path


def _write_model(tmp: Path) -> None:
    tokens, scores, types = _vocab()
    rng = np.random.default_rng(SELFTEST_MODEL_VERSION)
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("mesh-llm self-test")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(512)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_1))
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def q4_1(rows: int, cols: int) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        qtype = gguf.GGMLQuantizationType.Q4_1
        return gguf.quants.quantize(data, qtype), qtype

    def add_matrix(name: str, rows: int, cols: int) -> None:
        data, qtype = q4_1(rows, cols)
        writer.add_tensor(name, data, raw_dtype=qtype)

    def add_norm(name: str) -> None:
        writer.add_tensor(name, np.ones(N_EMBD, dtype=np.float32))

    add_matrix("token_embd.weight", len(tokens), N_EMBD)
    add_norm("output_norm.weight")
    add_matrix("output.weight", len(tokens), N_EMBD)
    for i in range(N_LAYERS):
        add_norm(f"blk.{i}.attn_norm.weight")
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add_matrix(f"blk.{i}.{name}.weight", N_EMBD, N_EMBD)
        add_norm(f"blk.{i}.ffn_norm.weight")
        add_matrix(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        add_matrix(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        add_matrix(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class _Child:
    """A child process with its output appended to the self-test log; stopped on exit."""

    def __init__(self, what: str, argv: list[str], log_path: Path) -> None:
        self.what = what
        with log_path.open("a") as sink:
            sink.write(f"\n$ {' '.join(argv)}\n")
            sink.flush()
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise _SelfTestFailedError(f"cannot start {what}: {exc}") from exc

    def check_alive(self, phase: str) -> None:
        code = self.proc.poll()
        if code is not None:
            raise _SelfTestFailedError(f"{self.what} {describe_exit(code)} {phase}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _http_json(url: str, body: dict[str, object] | None, timeout: float) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except (OSError, ValueError):
        return 0, None


def _check_llama_server(binary: Path, model: Path, log_path: Path) -> str:
    port = free_port()
    threads = str(max(1, min(4, os.cpu_count() or 1)))
    argv = [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-c", "256", "-np", "1", "-t", threads,
    ]  # fmt: skip
    child = _Child("llama-server", argv, log_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            child.check_alive("while loading the self-test model")
            status, _ = _http_json(f"{base}/health", None, 2.0)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise _SelfTestFailedError(f"llama-server not healthy after {LOAD_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        request = {"prompt": "Hello", "n_predict": TOKENS, "temperature": 0, "cache_prompt": False}
        status, reply = _http_json(f"{base}/completion", request, GENERATE_TIMEOUT_S)
        child.check_alive("while generating")
        if status != 200 or not isinstance(reply, dict):
            raise _SelfTestFailedError(
                f"llama-server answered the self-test completion with HTTP {status}"
            )
        produced = reply.get("tokens_predicted")
        if not isinstance(produced, int) or produced < 1:
            raise _SelfTestFailedError(
                f"llama-server generated no tokens ({reply.get('tokens_predicted')!r})"
            )
        return f"llama-server generated {produced} tokens"
    finally:
        child.stop()


def _rpc_hello(port: int) -> tuple[int, int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S) as sock:
        request = struct.pack("<BQ", RPC_HELLO, RPC_HELLO_REQUEST_SIZE)
        sock.sendall(request + bytes(RPC_HELLO_REQUEST_SIZE))
        head = _recv_exact(sock, 8)
        (size,) = struct.unpack("<Q", head)
        if size < 3 or size > 4096:
            raise _SelfTestFailedError(f"rpc-server sent a HELLO reply of {size} bytes")
        body = _recv_exact(sock, size)
    return body[0], body[1], body[2]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise _SelfTestFailedError("rpc-server closed the connection before answering HELLO")
        data += chunk
    return data


def _check_rpc_server(binary: Path, log_path: Path) -> str:
    port = free_port()
    child = _Child("rpc-server", [str(binary), "-H", "127.0.0.1", "-p", str(port)], log_path)
    try:
        deadline = time.monotonic() + RPC_TIMEOUT_S
        while True:
            child.check_alive("at start")
            try:
                version = _rpc_hello(port)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise _SelfTestFailedError(f"rpc-server did not answer HELLO: {exc}") from exc
                time.sleep(POLL_S)
        child.check_alive("after HELLO")
        return "rpc-server answered HELLO (protocol {}.{}.{})".format(*version)
    finally:
        child.stop()


def run_selftest(
    llama_server: Path, rpc_server: Path, *, model: Path, log_path: Path
) -> SelfTestResult:
    """Run both checks; never raises for a failing binary (the result says why)."""
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"mesh-llm self-test of {llama_server} and {rpc_server}\n")
    try:
        if not model.exists():
            write_selftest_model(model)
        server = _check_llama_server(llama_server, model, log_path)
        rpc = _check_rpc_server(rpc_server, log_path)
    except _SelfTestFailedError as exc:
        detail = str(exc)
        ok = False
    else:
        detail = f"{server}; {rpc}"
        ok = True
    with contextlib.suppress(OSError), log_path.open("a") as sink:
        sink.write(f"\nself-test {'passed' if ok else 'FAILED'}: {detail}\n")
    return SelfTestResult(ok, time.monotonic() - started, detail, log_path)
