"""Direct answers (enclave/http_protocol.py, HttpEdge.direct): small inference requests answered by the
HTTP protocol itself get the same answer as through ASGI, and what the edge must see still goes through it."""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.http_protocol import Arrivals, counting_protocol
from enclave.service import EnclaveService
from protocol.edge import AccessLog, HttpEdge
from protocol.manifest import load_manifest
from protocol.receipts import SignedReceipt, recover_signer

REPO = Path(__file__).resolve().parent.parent
BODY = b'{"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}'
PLAIN = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"


class Transport:
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class CountingApp:
    """The edge as uvicorn's ASGI app, counting the requests that reach it through ASGI."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> EnclaveService:
    nsm = open_nsm("sim", pki_dir=tmp_path_factory.mktemp("direct-pki"))
    return EnclaveService(load_manifest(REPO / "models"), nsm)


class Served:
    """One connection of the real protocol class over an in-memory transport."""

    def __init__(self, service: EnclaveService, *, direct: bool = True) -> None:
        self.log = io.StringIO()
        self.arrivals = Arrivals()
        self.edge: HttpEdge = create_app(service, access_log=AccessLog(self.log), arrivals=self.arrivals)
        self.asgi = CountingApp(self.edge)
        protocol_class = counting_protocol(self.arrivals, self.edge if direct else None)
        config = uvicorn.Config(self.asgi, http=protocol_class, log_level="warning", lifespan="off")
        self.state = ServerState()
        self.state.default_headers = [(b"date", b"Tue, 08 Dec 2026 00:00:00 GMT")]
        self.protocol = protocol_class(config, self.state, {}, asyncio.get_running_loop())
        self.transport = Transport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    async def exchange(self, data: bytes, answers: int = 1) -> list[Answer]:
        self.protocol.data_received(data)
        deadline = time.monotonic() + 10
        while len(parse_answers(self.transport.data)) < answers and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # what would come after: nothing
        return parse_answers(self.transport.data)

    def access_lines(self) -> list[str]:
        self.edge.access_log.flush()
        return self.log.getvalue().splitlines()


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_answers(data: bytes) -> list[Answer]:
    """The complete HTTP/1.1 responses in `data`, parsed by httptools as a client would."""
    answers: list[Answer] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            answers.append(Answer())

        def on_header(self, name: bytes, value: bytes) -> None:
            answers[-1].headers.append((name, value))

        def on_headers_complete(self) -> None:
            answers[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            answers[-1].body += body

        def on_message_complete(self) -> None:
            answers[-1].complete = True

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return [answer for answer in answers if answer.complete]


def request(body: bytes = BODY, extra: bytes = b"", start: bytes = PLAIN) -> bytes:
    return start % len(body) + extra + b"\r\n" + body


def test_a_plain_inference_request_is_answered_without_asgi(service: EnclaveService) -> None:
    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        return served, await served.exchange(request())

    served, [answer] = asyncio.run(run())
    assert served.asgi.calls == 0
    assert answer.status == 200
    assert answer.header(b"date") == b"Tue, 08 Dec 2026 00:00:00 GMT"
    assert answer.header(b"content-type") == b"application/json"
    assert answer.header(b"content-length") == b"%d" % len(answer.body)
    assert answer.header(b"x-verinfer-simulated") == b"true"
    request_id = answer.header(b"x-request-id")
    assert request_id is not None
    reply = answer.json()
    receipt = SignedReceipt.from_json(reply["receipt"])
    assert recover_signer(receipt.receipt, receipt.signature) == service.key.address
    assert served.arrivals.count == 0  # counted while it ran, uncounted once answered
    [line] = served.access_lines()
    assert request_id.decode() in line and " POST /infer 200 " in line
    assert not served.transport.closed  # keep-alive


def test_direct_and_asgi_answers_agree(service: EnclaveService) -> None:
    """Same status, headers (but the request id) and outputs, with a given X-Request-ID echoed by both."""

    async def run(direct: bool, body: bytes) -> tuple[Served, Answer]:
        served = Served(service, direct=direct)
        [answer] = await served.exchange(request(body, b"X-Request-ID: given-id.1\r\n"))
        return served, answer

    for body in (BODY, b'{"model": "iris-mlp", "inputs": [[1e39, 0, 0, 0]]}', b"{", b'{"model": "nope"}'):
        direct_served, direct = asyncio.run(run(True, body))
        asgi_served, through_asgi = asyncio.run(run(False, body))
        assert (direct_served.asgi.calls, asgi_served.asgi.calls) == (0, 1)
        assert direct.status == through_asgi.status
        assert direct.headers == through_asgi.headers
        assert direct.header(b"x-request-id") == b"given-id.1"
        if direct.status == 200:
            assert direct.json()["outputs"] == through_asgi.json()["outputs"]
        else:
            assert direct.body == through_asgi.body


def test_v2_infer_is_answered_directly(service: EnclaveService) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3, 5.2, 2.3]}]}
    )
    start = b"POST /v2/models/iris-mlp/versions/1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"

    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        return served, await served.exchange(request(body, start=start))

    served, [answer] = asyncio.run(run())
    assert served.asgi.calls == 0
    assert answer.status == 200 and answer.json()["parameters"]["receipt"]["signature"]


GZIPPED = gzip.compress(BODY)
THROUGH_ASGI = {
    "a client that accepts compressed answers": (request(extra=b"Accept-Encoding: gzip\r\n"), 200),
    "a compressed body": (request(GZIPPED, b"Content-Encoding: gzip\r\n"), 200),
    "Expect: 100-continue": (request(extra=b"Expect: 100-continue\r\n"), 200),
    "a chunked body": (
        b"POST /infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
        200,
    ),
    "HTTP/1.0": (request(start=b"POST /infer HTTP/1.0\r\nHost: x\r\nContent-Length: %d\r\n"), 200),
    "an escaped path": (request(start=b"POST /inf%%65r HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"), 200),
    "a body over 64 KiB": (request(BODY[:-1] + b" " * 70_000 + b"}"), 200),
    "a body over the server's limit": (request(b" " * 5_000_000), 413),
    "another route": (b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n", 200),
}


@pytest.mark.parametrize("case", list(THROUGH_ASGI))
def test_what_the_edge_must_see_goes_through_asgi(service: EnclaveService, case: str) -> None:
    data, status = THROUGH_ASGI[case]

    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        return served, await served.exchange(data)

    served, answers = asyncio.run(run())
    answer = answers[-1]  # after an interim 100 (Continue) for Expect
    assert served.asgi.calls == 1
    assert answer.status == status
    assert served.arrivals.count == 0


def test_a_pipelined_request_waits_for_the_one_before(service: EnclaveService) -> None:
    """Three requests in one packet: direct, through ASGI, then direct again behind an ASGI one (so it is
    queued by uvicorn); answered in order."""
    data = (
        request(extra=b"X-Request-ID: first\r\n")
        + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Request-ID: second\r\n\r\n"
        + request(extra=b"X-Request-ID: third\r\n")
    )

    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        return served, await served.exchange(data, answers=3)

    served, answers = asyncio.run(run())
    assert [a.header(b"x-request-id") for a in answers] == [b"first", b"second", b"third"]
    assert [a.status for a in answers] == [200, 200, 200]
    assert served.arrivals.count == 0


def test_connection_close_is_honoured(service: EnclaveService) -> None:
    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        return served, await served.exchange(request(extra=b"Connection: close\r\n"))

    served, [answer] = asyncio.run(run())
    assert served.asgi.calls == 0
    assert answer.status == 200 and answer.header(b"connection") == b"close"
    assert served.transport.closed


def test_a_client_that_leaves_is_logged_and_uncounted(service: EnclaveService) -> None:
    async def run() -> Served:
        served = Served(service)
        served.protocol.data_received(request())
        served.protocol.connection_lost(None)  # before the answer's task has run
        for _ in range(20):
            await asyncio.sleep(0.001)
        return served

    served = asyncio.run(run())
    assert served.transport.data == b""
    assert served.arrivals.count == 0
    [line] = served.access_lines()
    assert " POST /infer 499 " in line


def test_a_graceful_shutdown_closes_after_the_answer(service: EnclaveService) -> None:
    async def run() -> tuple[Served, list[Answer]]:
        served = Served(service)
        served.protocol.data_received(request())
        served.protocol.shutdown()  # while the request is in flight: answer it, then close
        return served, await served.exchange(b"")

    served, [answer] = asyncio.run(run())
    assert answer.status == 200 and answer.header(b"connection") == b"close"
    assert served.transport.closed


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from verinfer.processes import running_server

    pki = tmp_path_factory.mktemp("cors-pki")
    with running_server("--nsm", "sim", "--pki-dir", str(pki), "--no-llm", "--cors-origin", "*") as url:
        yield url


def test_with_cors_every_answer_carries_its_headers(cors_server: str) -> None:
    """A plain request (no Accept-Encoding: one the protocol would answer itself) still gets CORS headers."""
    host, port = cors_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request(extra=b"Origin: https://app.example\r\n"))
        data = b""
        while not parse_answers(data):
            chunk = connection.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
    [answer] = parse_answers(data)
    assert answer.status == 200
    assert answer.header(b"access-control-allow-origin") == b"*"
