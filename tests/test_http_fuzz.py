"""Raw HTTP/1.1 from a seeded fuzzer against a real server: whatever arrives on a socket (pipelined requests,
bodies shorter than declared, odd request ids, bytes that are not HTTP, clients that leave), the server
answers or closes, logs no exception, and ends with nothing counted in flight."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from verinfer.processes import running_server

BODIES = (
    b'{"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}',
    b'{"model": "iris-ols", "inputs": [[1, 2, 3]]}',
    b'{"model": "iris-ols", "inputs": [[1e400, 2, 3]]}',
    b'{"model": "mnist-lenet", "inputs": [[[1]]]}',
    b'{"model": "iris-mlp", "inputs": "x"}',
    b"{",
    b"",
    b"null",
    b"\xff\xfe",
)
PATHS = (
    b"/infer",
    b"/infer?x=1",
    b"/v2/models/iris-mlp/infer",
    b"/v2/models/iris-mlp/versions/1/infer",
    b"/v2/models/nope/infer",
    b"/.well-known/ohttp-gateway",
)


def request(body: bytes, *, length: int | None = None, path: bytes = b"/infer", extra: bytes = b"") -> bytes:
    declared = len(body) if length is None else length
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (path, declared, extra, body)


def one_connection(rng: random.Random) -> bytes:
    """What one fuzzed client sends: one to five requests of one kind, back to back."""
    kind = rng.randrange(6)
    data = b""
    for _ in range(rng.randrange(1, 6)):
        body = rng.choice(BODIES)
        if kind == 0:
            data += request(body)
        elif kind == 1:  # a body shorter than declared: the client then leaves or waits
            data += request(body, length=len(body) + rng.randrange(1, 10))
        elif kind == 2:
            junk = bytes(rng.choice(b"ab9._%\x01 \xff") for _ in range(rng.randrange(1, 200)))
            data += request(body, extra=b"X-Request-ID: " + junk + b"\r\n")
        elif kind == 3:
            data += request(body, path=rng.choice(PATHS))
        elif kind == 4:  # cut anywhere
            whole = request(body)
            data += whole[: rng.randrange(1, len(whole) + 1)]
        else:
            data += rng.randbytes(rng.randrange(1, 80))
    return data


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("http-fuzz")
    log = tmp / "serve.log"
    args = ("--nsm", "sim", "--pki-dir", str(tmp), "--no-llm", "--access-log", "off")
    with running_server(*args, log=log) as url:
        yield url, log


def test_raw_http_never_takes_the_server_down(fuzzed_server: tuple[str, Path]) -> None:
    url, log = fuzzed_server
    host, port = url.removeprefix("http://").split(":")
    rng = random.Random(11)
    answered = 0
    for _ in range(300):
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(one_connection(rng))
            if rng.random() < 0.3:
                continue  # leaves without reading
            client.settimeout(0.2)
            received = b""
            try:
                while chunk := client.recv(65536):
                    received += chunk
            except TimeoutError:
                pass
            answered += received.count(b"HTTP/1.1 ")
    assert answered > 100  # 337 here: most clients get answers (the rest sent junk, or left)
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/infer", content=BODIES[0]).status_code == 200
        in_flight = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("verinfer_inference_requests_in_flight ")
        ]
    assert in_flight == ["verinfer_inference_requests_in_flight 0.0"]
    output = log.read_text(errors="replace")
    assert "Traceback" not in output and "Exception" not in output, output[-3000:]
