"""One write per answer (enclave/http_protocol.py), and a real server still speaks HTTP/1.1 correctly."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx

from enclave.http_protocol import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_a_head_goes_out_with_its_body() -> None:
    async def run() -> list[bytes]:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert inner.writes == []
        transport.write(memoryview(b"body"))  # written with the head at once, not at the end of the turn
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        transport.write(b"next turn")
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated
        return inner.writes

    assert asyncio.run(run()) == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next turn"]


def test_close_writes_what_is_pending_first() -> None:
    async def run() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"last answer")
        transport.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left and writes nothing to a closed socket
        return inner

    inner = asyncio.run(run())
    assert inner.writes == [b"last answer"] and inner.closed


def test_keep_alive_and_close_on_a_real_server(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        for _ in range(3):  # the same connection, answer after answer
            assert client.get("/v2/health/live").json() == {"live": True}
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the server closes after writing the whole answer
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b'{"live":true}'
