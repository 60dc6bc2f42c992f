"""The management API over real sockets: routes, errors, and the event stream."""

from __future__ import annotations

import asyncio
import json

from mesh_llm.api import ChangeHub, ManagementServer


async def _server(
    hub: ChangeHub, state: dict[str, int], keepalive_s: float = 15.0
) -> ManagementServer:
    server = ManagementServer(
        host="127.0.0.1",
        port=0,
        status=lambda: {"version": state["version"]},
        runtime_models=lambda: {"models": []},
        runtime_processes=lambda: {"processes": []},
        hub=hub,
        keepalive_s=keepalive_s,
    )
    await server.start()
    return server


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_routes_and_errors() -> None:
    hub, state = ChangeHub(), {"version": 1}
    server = await _server(hub, state)
    try:
        assert await _get(server.port, "/api/status") == (200, b'{"version": 1}')
        status, body = await _get(server.port, "/api/runtime")
        assert (status, json.loads(body)) == (200, {"models": []})
        status, body = await _get(server.port, "/nope")
        assert status == 404
        assert "error" in json.loads(body)
        status, _ = await _get(server.port, "/api/status", method="POST")
        assert status == 405
        status, body = await _get(server.port, "/")
        assert status == 200
        assert b"<html" in body
    finally:
        await server.close()


async def _next_frame(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.readuntil(b"\n\n")


async def test_events_push_the_status_on_every_change_and_keep_alive() -> None:
    hub, state = ChangeHub(), {"version": 1}
    server = await _server(hub, state, keepalive_s=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"text/event-stream" in head
        assert await _next_frame(reader) == b'data: {"version": 1}\n\n'
        state["version"] = 2
        hub.changed()
        assert await _next_frame(reader) == b'data: {"version": 2}\n\n'
        assert await _next_frame(reader) == b": keepalive\n\n"  # nothing changed for 0.3 s
    finally:
        writer.close()
        await server.close()
