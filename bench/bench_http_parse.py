"""HTTP/1.1 request parsing: mesh-llm's sans-IO reader against httptools (llhttp) and h11.

Two parts:

- **Speed.** Each parser turns the same bytes into the same thing the ingress needs (method,
  target, headers as ``str`` pairs, the decoded body), fed the way a socket would hand them over.
  Workloads: a typical OpenAI chat request (the headers the OpenAI Python SDK sends, a 330-byte
  body), the same with a 32 KiB prompt (in one read and in 16 KiB reads), chunked bodies, and four
  requests pipelined in one read. The parsers run interleaved (the order rotates every round);
  each round times a batch of parses per parser in CPU time (``time.process_time``, so time the
  scheduler gives to other processes does not count), and the ratio reported is the median of the
  per-round ratios (library / ours: above 1 means ours is faster) with a distribution-free 95%
  interval of that median.
- **Strictness.** Request-smuggling and malformed-framing cases (duplicate and conflicting
  Content-Length, CL + TE, Transfer-Encoding other than chunked, obs-fold, bare LF/CR, invalid
  header names, oversize heads, signed Content-Length, bad chunk framing ...), each fed to the
  three parsers: ``reject``, ``waits`` (wants more bytes) or what was accepted.

The adapters for the libraries do what the ingress would have to do with them: collect the head,
decode names and values, join the body, and count header lines and body bytes against the same
limits (64 header lines, 8 MiB body); head size is bounded by the library (h11:
``max_incomplete_event_size``) or by the callbacks (httptools).

    .venv/bin/python bench/bench_http_parse.py [--rounds 15] [--batch-ms 20] [--against REV]

``--against REV`` adds ``protocol/http1.py`` as of git revision REV as one more parser
(``ours@REV``), to measure a change to our parser in the same interleaved rounds.

Needs ``httptools`` and ``h11`` (``.venv/bin/pip install httptools h11``; h11 comes with httpx);
a missing one is skipped. Prints tables and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench")]

from streamclient import median_ci95  # noqa: E402

from mesh_llm.errors import ProtocolError  # noqa: E402
from mesh_llm.protocol.http1 import (  # noqa: E402
    DEFAULT_MAX_BODY,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    RequestReader,
)

try:
    import httptools
except ImportError:  # optional: the bench skips it
    httptools = None
try:
    import h11
except ImportError:  # optional: the bench skips it
    h11 = None

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Parsed = tuple[str, str, tuple[tuple[str, str], ...], bytes]
"""method, target, headers, body"""
ParseFn = Callable[[list[bytes]], list[Parsed]]


class RejectedError(Exception):
    """A parser refused the input."""


# -- adapters ---------------------------------------------------------------------------------


def parse_ours(segments: list[bytes], reader_class: Any = RequestReader) -> list[Parsed]:
    """mesh_llm.protocol.http1: one reader per request; pipelined bytes go to a fresh reader."""
    out: list[Parsed] = []
    reader = reader_class(DEFAULT_MAX_BODY)
    try:
        for segment in segments:
            data = segment
            while data:
                events = reader.feed(data)
                data = b""
                for event in events:
                    if type(event).__name__ == "RequestComplete":
                        r = event.request
                        out.append((r.method, r.target, r.headers, r.body))
                    elif type(event).__name__ == "PipelinedBytes":
                        data = segment[len(segment) - event.count :]
                        reader = reader_class(DEFAULT_MAX_BODY)
    except ProtocolError as exc:
        raise RejectedError(str(exc)) from exc
    return out


class _HttptoolsRequest:
    """The callbacks an httptools-based ingress would implement."""

    def __init__(self) -> None:
        self.parser: Any = None
        self.done: list[Parsed] = []
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.method = ""

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise RejectedError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if len(self.headers) >= MAX_HEADER_LINES or self.head_bytes > MAX_HEAD_BYTES:
            raise RejectedError("head too large")
        self.headers.append((name.decode("ascii"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method().decode("ascii")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > DEFAULT_MAX_BODY:
            raise RejectedError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.done.append((self.method, self.url.decode("latin-1"), tuple(self.headers), body))
        self._reset()


def parse_httptools(segments: list[bytes]) -> list[Parsed]:
    proto = _HttptoolsRequest()
    parser = httptools.HttpRequestParser(proto)
    proto.parser = parser
    try:
        for segment in segments:
            parser.feed_data(segment)
    except httptools.HttpParserError as exc:
        raise RejectedError(str(exc)) from exc
    except httptools.HttpParserUpgrade as exc:
        raise RejectedError(f"upgrade: {exc}") from exc
    return proto.done


def parse_h11(segments: list[bytes]) -> list[Parsed]:
    out: list[Parsed] = []
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    head: Any = None
    body: list[bytes] = []
    try:
        for segment in segments:
            conn.receive_data(segment)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    if len(event.headers) > MAX_HEADER_LINES:
                        raise RejectedError("too many headers")
                    head = event
                    body = []
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    headers = tuple(
                        (raw.decode("ascii"), value.decode("latin-1"))
                        for raw, value in head.headers.raw_items()
                    )
                    out.append(
                        (
                            head.method.decode("ascii"),
                            head.target.decode("latin-1"),
                            headers,
                            body[0] if len(body) == 1 else b"".join(body),
                        )
                    )
                    # A server may only read the next request after answering this one:
                    # the pipelined rest goes to a fresh connection state.
                    rest = bytes(conn.trailing_data[0])
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
                    if not rest:
                        break
                    conn.receive_data(rest)
                else:
                    break
    except h11.RemoteProtocolError as exc:
        raise RejectedError(str(exc)) from exc
    return out


def ours_at(rev: str) -> ParseFn:
    """parse_ours with protocol/http1.py as of git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/mesh_llm/protocol/http1.py"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    name = "_http1_at_" + rev.replace("~", "_").replace("^", "_")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"http1.py@{rev}", "exec"), module.__dict__)
    reader_class = module.RequestReader
    return lambda segments: parse_ours(segments, reader_class)


def parsers(against: str | None = None) -> dict[str, ParseFn]:
    found: dict[str, ParseFn] = {"ours": parse_ours}
    if against:
        found[f"ours@{against}"] = ours_at(against)
    if httptools is not None:
        found["httptools"] = parse_httptools
    if h11 is not None:
        found["h11"] = parse_h11
    return found


# -- workloads --------------------------------------------------------------------------------

SDK_HEADERS = (
    b"Host: 127.0.0.1:9337\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.0\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"X-Stainless-Package-Version: 1.54.0\r\n"
    b"X-Stainless-OS: Linux\r\n"
    b"X-Stainless-Arch: x64\r\n"
    b"X-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\n"
    b"Authorization: Bearer sk-no-key-required\r\n"
    b"X-Stainless-Async: false\r\n"
    b"x-stainless-retry-count: 0\r\n"
)


def chat_body(prompt_bytes: int) -> bytes:
    user = ("Tell me about lighthouses. " * (prompt_bytes // 27 + 1))[:prompt_bytes]
    return json.dumps(
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": user},
            ],
            "model": "SmolLM2-135M-Instruct",
            "max_tokens": 256,
            "stream": True,
            "temperature": 0,
        }
    ).encode()


def with_length(body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        + SDK_HEADERS
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def with_chunks(body: bytes, chunk: int) -> bytes:
    out = bytearray(
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        + SDK_HEADERS
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    for pos in range(0, len(body), chunk):
        piece = body[pos : pos + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[pos : pos + size] for pos in range(0, len(data), size)]


def workloads() -> dict[str, tuple[list[bytes], int]]:
    """name -> (segments as read from the socket, requests in them)."""
    small = chat_body(180)
    large = chat_body(32 * 1024)
    models = b"GET /v1/models HTTP/1.1\r\n" + SDK_HEADERS + b"\r\n"
    return {
        "chat, 330 B body": ([with_length(small)], 1),
        "chat, 32 KiB body": ([with_length(large)], 1),
        "chat, 32 KiB body, 16 KiB reads": (pieces(with_length(large), 16 * 1024), 1),
        "chunked, 330 B in 1 chunk": ([with_chunks(small, 1 << 20)], 1),
        "chunked, 32 KiB in 4 KiB chunks": ([with_chunks(large, 4096)], 1),
        "4 pipelined (GET + 3 chats)": ([models + with_length(small) * 3], 4),
    }


# -- strictness cases -------------------------------------------------------------------------

_POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
_CHUNKED = _POST + b"Transfer-Encoding: chunked\r\n"

STRICTNESS_CASES: dict[str, bytes] = {
    "duplicate Content-Length, same value": _POST
    + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "duplicate Content-Length, different values": _POST
    + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "Content-Length list 5, 6": _POST + b"Content-Length: 5, 6\r\n\r\nhello!",
    "Content-Length + Transfer-Encoding: chunked": _POST
    + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "Transfer-Encoding: gzip": _POST + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "Transfer-Encoding: gzip + Content-Length": _POST
    + b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    "Transfer-Encoding: chunked, gzip": _POST
    + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding: chunked, chunked": _POST
    + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "two Transfer-Encoding: chunked headers": _CHUNKED
    + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding: xchunked": _POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding with VT before chunked": _POST
    + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "empty Transfer-Encoding + Content-Length": _POST
    + b"Transfer-Encoding: \r\nContent-Length: 5\r\n\r\nhello",
    "Transfer-Encoding: chunked in HTTP/1.0": b"POST / HTTP/1.0\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "space before colon: Transfer-Encoding :": _POST
    + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
    "obs-fold": _POST + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "obs-fold continuing Transfer-Encoding": _POST
    + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello",
    "bare LF line endings": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare LF inside the head": b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    "bare LF ends the head": _POST + b"Content-Length: 5\r\n\nhello\r\n\r\n",
    "bare CR in a header value": _POST + b"X-A: a\rb\r\n\r\n",
    "bare LF after a chunk size": _CHUNKED + b"\r\n5\nhello\r\n0\r\n\r\n",
    "bare LF after chunk data": _CHUNKED + b"\r\n5\r\nhello\n0\r\n\r\n",
    "bare LF in a chunk extension": _CHUNKED + b"\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    "control character in a chunk extension": _CHUNKED + b"\r\n5;a=\x00\r\nhello\r\n0\r\n\r\n",
    "whitespace after chunk size": _CHUNKED + b"\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk size 0x5": _CHUNKED + b"\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size -5": _CHUNKED + b"\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk size overflowing 64 bits": _CHUNKED + b"\r\n1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n",
    "chunk longer than its size": _CHUNKED + b"\r\n3\r\nhello\r\n0\r\n\r\n",
    "space in header name": _POST + b"X A: b\r\n\r\n",
    "NUL in header name": _POST + b"X\x00A: b\r\n\r\n",
    "non-ASCII header name": _POST + b"X\xe9: b\r\n\r\n",
    "empty header name": _POST + b": b\r\n\r\n",
    "header line without colon": _POST + b"X-A b\r\n\r\n",
    "NUL in header value": _POST + b"X-A: a\x00b\r\n\r\n",
    "Content-Length: -5": _POST + b"Content-Length: -5\r\n\r\nhello",
    "Content-Length: +5": _POST + b"Content-Length: +5\r\n\r\nhello",
    "Content-Length: 0x5": _POST + b"Content-Length: 0x5\r\n\r\nhello",
    "Content-Length: 5 5": _POST + b"Content-Length: 5 5\r\n\r\nhello",
    "Content-Length empty": _POST + b"Content-Length: \r\n\r\n",
    "Content-Length over 2^64": _POST + b"Content-Length: 18446744073709551621\r\n\r\nhello",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no Host in HTTP/1.1": b"GET / HTTP/1.1\r\n\r\n",
    "head over 64 KiB": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * (64 * 1024) + b"\r\n\r\n",
    "100 header lines": b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: b\r\n" * 100 + b"\r\n",
    "tab between request-line parts": b"GET\t/\tHTTP/1.1\r\nHost: h\r\n\r\n",
    "two spaces in the request line": b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    "lowercase http/1.1": b"GET / http/1.1\r\nHost: h\r\n\r\n",
    "NUL in target": b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n",
    "request after Content-Length body (pipelined)": _POST
    + b"Content-Length: 5\r\n\r\nhelloGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
}


def verdict(parse: ParseFn, raw: bytes) -> str:
    try:
        parsed = parse([raw])
    except RejectedError:
        return "reject"
    except Exception as exc:  # noqa: BLE001 - a library raising something else is a finding
        return f"raised {type(exc).__name__}"
    if not parsed:
        return "waits"
    method, _, _, body = parsed[0]
    extra = f" +{len(parsed) - 1} req" if len(parsed) > 1 else ""
    return f"accept {method} {body[:12]!r}{extra}"


# -- timing -----------------------------------------------------------------------------------


def check_agree(found: dict[str, ParseFn], cases: dict[str, tuple[list[bytes], int]]) -> None:
    """Every parser returns the same requests for every workload (h11 lowercases nothing here:
    raw_items keeps the spelling)."""
    for name, (segments, count) in cases.items():
        expected = parse_ours(segments)
        assert len(expected) == count, name
        for label, parse in found.items():
            got = parse(segments)
            assert got == expected, f"{label} disagrees on {name!r}"


def batch_seconds(parse: ParseFn, segments: list[bytes], n: int) -> float:
    gc.collect()
    started = time.process_time()
    for _ in range(n):
        parse(segments)
    return time.process_time() - started


def time_workload(
    found: dict[str, ParseFn], segments: list[bytes], count: int, rounds: int, batch_s: float
) -> dict[str, Any]:
    # Size one batch so that the slowest parser takes about batch_s.
    slowest = max(batch_seconds(p, segments, 50) / 50 for p in found.values())
    n = max(20, int(batch_s / max(slowest, 1e-7)))
    names = list(found)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            per_call[name].append(batch_seconds(found[name], segments, n) / n)
    result: dict[str, Any] = {"batch": n, "requests": count}
    for name in names:
        result[f"{name}_us"] = round(statistics.median(per_call[name]) * 1e6 / count, 2)
    for name in names[1:]:
        ratios = [lib / ours for lib, ours in zip(per_call[name], per_call["ours"], strict=True)]
        low, high = median_ci95(ratios)
        result[f"{name}_vs_ours"] = round(statistics.median(ratios), 3)
        result[f"{name}_vs_ours_ci95"] = [round(low, 3), round(high, 3)]
        result[f"{name}_vs_ours_ratios"] = [round(x, 4) for x in ratios]
    return result


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-ms", type=float, default=20.0)
    parser.add_argument("--against", metavar="REV", help="also time http1.py as of REV")
    args = parser.parse_args()

    found = parsers(args.against)
    cases = workloads()
    check_agree(found, cases)
    libs = [name for name in found if name != "ours"]

    speed: dict[str, Any] = {}
    print("speed: CPU us per request (median of rounds); library / ours [95% CI], > 1: ours faster")
    header = f"{'workload':34} {'ours':>8}" + "".join(f" {n:>10} {'ratio [CI]':>20}" for n in libs)
    print(header)
    for name, (segments, count) in cases.items():
        row = time_workload(found, segments, count, args.rounds, args.batch_ms / 1000)
        speed[name] = row
        line = f"{name:34} {row['ours_us']:>8}"
        for lib in libs:
            low, high = row[f"{lib}_vs_ours_ci95"]
            ratio = f"{row[f'{lib}_vs_ours']} [{low}, {high}]"
            line += f" {row[f'{lib}_us']:>10} {ratio:>20}"
        print(line, flush=True)

    print()
    strictness: dict[str, dict[str, str]] = {}
    print(f"{'strictness case':48}" + "".join(f" {n:28}" for n in found))
    for case, raw in STRICTNESS_CASES.items():
        strictness[case] = {label: verdict(parse, raw) for label, parse in found.items()}
        print(f"{case[:48]:48}" + "".join(f" {strictness[case][n][:28]:28}" for n in found))

    versions = {
        "httptools": getattr(httptools, "__version__", None),
        "h11": getattr(h11, "__version__", None),
    }
    result = {
        "bench": "http_parse",
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "commit": git_commit(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "rounds": args.rounds,
        "against": args.against,
        "speed": speed,
        "strictness": strictness,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"http-parse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
