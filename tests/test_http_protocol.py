"""One write per answer (enclave/http_protocol.py), and a real server still speaks HTTP/1.1 correctly."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from attestation.nsm import open_nsm
from enclave.batcher import Batcher
from enclave.http_protocol import CoalescingTransport
from enclave.service import EnclaveService
from protocol.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent


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


def test_an_answer_to_a_closed_connection_is_dropped() -> None:
    """Regression: uvicorn closes a connection when a request pipelined behind another is malformed; the
    earlier request's answer, written after that, reached uvloop's closed transport, which raised (logged as
    "Exception in ASGI application")."""

    async def run() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.close()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")  # RecordingTransport, like uvloop's, refuses a write once closed
        await asyncio.sleep(0)
        return inner

    assert asyncio.run(run()).writes == []


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


def test_a_lone_request_runs_without_waiting_a_loop_turn(tmp_path: Path) -> None:
    """With the server's arrival count, a batch that everyone who arrived has joined runs at once."""
    service = EnclaveService(load_manifest(REPO / "models"), open_nsm("sim", pki_dir=tmp_path))
    model = service.runtime.get("iris-mlp")
    inputs = [("features", np.asarray([[6.7, 3.0, 5.2, 2.3]], np.float32))]

    async def first_step(arrivals: Callable[[], int] | None) -> bool:
        """Whether infer() finished without suspending."""
        step = Batcher(service, arrivals=arrivals).infer(model, inputs, b"\1" * 32, None)
        try:
            step.send(None)
        except StopIteration:
            return True
        step.close()
        return False

    assert asyncio.run(first_step(lambda: 1))  # alone: no turn lost
    assert not asyncio.run(first_step(lambda: 2))  # another request has arrived: wait for it this turn
    assert not asyncio.run(first_step(None))  # count unknown: wait one turn for company


def metric(server: str, name: str) -> float:
    for line in httpx.get(f"{server}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_arrivals_are_counted_and_uncounted(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    body = b'{"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}'
    with socket.create_connection((host, int(port)), timeout=5) as stuck:
        # Headers of an inference request whose body never finishes: it has arrived and is not answered.
        stuck.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        deadline = time.monotonic() + 5
        while metric(server, "verinfer_inference_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(server, "verinfer_inference_requests_in_flight") == 1
        with httpx.Client(base_url=server) as client:
            answers = [client.post("/infer", content=body) for _ in range(5)]
        assert all(a.status_code == 200 for a in answers)
    deadline = time.monotonic() + 5  # the stuck client hung up: no longer counted
    while metric(server, "verinfer_inference_requests_in_flight") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "verinfer_inference_requests_in_flight") == 0
