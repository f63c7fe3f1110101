"""Every outbound HTTP call (relay -> enclave, relay CLI -> verifier, verifier -> enclave) has a total
deadline and a response size cap, against real misbehaving peers on loopback; the relay's batch token."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest

from attestation import Policy
from protocol.tensors import encode_tensors
from relay.http_client import Limits, OutboundError, request, request_async
from relay.registration import RegistrationError, attest_enclave
from relay.runner import EnclaveClient, Relay
from relay.state import RelayState
from verinfer.cli import main
from verinfer.processes import ANVIL_KEYS, VERINFER, free_port, stop

from .chain_fixtures import Chain
from .conftest import BATCH_TOKEN
from .relay_db import RelayDb

IRIS_INPUT = encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])
Respond = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP server on a free loopback port that reads each request (head, and a Content-Length body),
    records it, then lets `respond` write whatever it likes: the misbehaving peers under test."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self.accepted = 0
        self.stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                self.requests.append(read_request(conn))
                self.respond(conn, self.stopped)
            except OSError:
                pass  # the client gave up: what these peers are for

    def header(self, index: int, name: str) -> str | None:
        head = self.requests[index].split(b"\r\n\r\n", 1)[0].decode()
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def body(self, index: int) -> bytes:
        return self.requests[index].split(b"\r\n\r\n", 1)[1]

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# --- misbehaving peers --------------------------------------------------------------------------------


def drip(prefix: bytes, forever: bytes = b"a", interval: float = 0.2) -> Respond:
    """`prefix` at once, then one byte of `forever` every `interval` seconds, forever."""

    def respond(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(prefix)
        for byte in itertools.cycle(forever):
            if stopped.wait(interval):
                return
            conn.sendall(bytes((byte,)))

    return respond


DRIP_HEADERS = drip(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000)
DRIP_BODY = drip(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n", b" "
)


def endless(head: bytes, chunk: bytes) -> Respond:
    def respond(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(head)
        while not stopped.is_set():
            conn.sendall(chunk)

    return respond


ENDLESS_UNTIL_CLOSE = endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b"[" * 65536)
ENDLESS_CHUNKED = endless(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"10000\r\n" + b" " * 0x10000 + b"\r\n",
)
DECLARES_HUGE = endless(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b" " * 65536)


def answer(status: int, body: Any, headers: bytes = b"") -> Respond:
    payload = orjson.dumps(body)

    def respond(conn: socket.socket, _stopped: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            % (status, len(payload))
            + b"Connection: close\r\n%s\r\n" % headers
            + payload
        )

    return respond


@contextmanager
def peer(respond: Respond) -> Iterator[RawServer]:
    with RawServer(respond) as server:
        yield server


def bounded(call: Callable[[], Any], limit_s: float) -> tuple[Any, BaseException | None, float]:
    """Run `call` in a thread; fail the test if it has not returned within `limit_s` (the bug being that it
    never does). Returns (result, exception, elapsed seconds)."""
    outcome: dict[str, Any] = {}
    started = time.monotonic()

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"the call was still running after {limit_s} s"
    return outcome.get("result"), outcome.get("error"), time.monotonic() - started


def sync_call(url: str, limits: Limits, **kwargs: Any) -> Any:
    return request("GET", url, limits=limits, **kwargs)


def async_call(url: str, limits: Limits, **kwargs: Any) -> Any:
    return asyncio.run(request_async("GET", url, limits=limits, **kwargs))


VARIANTS = pytest.mark.parametrize("call", [sync_call, async_call], ids=["sync", "async"])


# --- relay.http_client --------------------------------------------------------------------------------


@VARIANTS
def test_a_normal_response_is_read(call: Callable[..., Any]) -> None:
    with peer(answer(200, {"models": [1, 2]})) as server:
        response = call(f"{server.url}/models", Limits(deadline_s=5), params={"nonce": "ab"})
        assert response.status == 200 and response.ok and response.json() == {"models": [1, 2]}
        assert server.requests[0].startswith(b"GET /models?nonce=ab HTTP/1.1")
        assert server.header(0, "accept-encoding") == "identity"


def test_post_sends_json_and_headers() -> None:
    with peer(answer(201, {"ok": True})) as server:
        response = request("POST", server.url + "/x", json={"a": 1}, headers={"Authorization": "Bearer t"})
        assert response.status == 201 and orjson.loads(server.body(0)) == {"a": 1}
        assert server.header(0, "authorization") == "Bearer t"


@VARIANTS
@pytest.mark.parametrize("respond", [DRIP_HEADERS, DRIP_BODY], ids=["headers", "body"])
def test_a_slow_drip_ends_at_the_deadline(call: Callable[..., Any], respond: Respond) -> None:
    with peer(respond) as server:
        _, error, elapsed = bounded(lambda: call(server.url, Limits(deadline_s=1.0)), 10)
    assert isinstance(error, OutboundError) and error.kind == "deadline", error
    assert "exceeded the 1.0 s deadline" in str(error)
    assert 0.9 < elapsed < 3.0


@VARIANTS
@pytest.mark.parametrize("respond", [ENDLESS_UNTIL_CLOSE, ENDLESS_CHUNKED], ids=["until-close", "chunked"])
def test_an_endless_response_ends_at_the_size_cap(call: Callable[..., Any], respond: Respond) -> None:
    with peer(respond) as server:
        _, error, elapsed = bounded(lambda: call(server.url, Limits(deadline_s=30, max_bytes=1 << 20)), 20)
    assert isinstance(error, OutboundError) and error.kind == "too_large", error
    assert "response larger than 1048576 bytes" in str(error)
    assert elapsed < 10  # the cap ended it, not the deadline


@VARIANTS
def test_a_declared_oversized_body_is_refused_before_reading(call: Callable[..., Any]) -> None:
    with peer(DECLARES_HUGE) as server:
        _, error, _ = bounded(lambda: call(server.url, Limits(deadline_s=30, max_bytes=1000)), 10)
    assert isinstance(error, OutboundError) and error.kind == "too_large"
    assert "declares 1000000000000" in str(error)


def test_coded_responses_are_refused() -> None:
    with (
        peer(answer(200, {"x": 1}, b"Content-Encoding: gzip\r\n")) as server,
        pytest.raises(OutboundError) as info,
    ):
        request("GET", server.url)
    assert info.value.kind == "protocol" and "gzip" in str(info.value)


def test_errors_name_what_failed() -> None:
    with pytest.raises(OutboundError) as info:
        request("GET", f"http://127.0.0.1:{free_port()}/models?secret=1")
    assert info.value.kind == "connect" and "/models" in str(info.value) and "secret" not in str(info.value)
    with peer(answer(503, {"code": "busy"})) as server:
        response = request("GET", server.url)
        assert response.status == 503 and not response.ok
        with pytest.raises(OutboundError) as info:
            response.raise_for_status()
        assert info.value.kind == "status" and info.value.status == 503 and "busy" in str(info.value)
    with peer(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", b"")) as server:
        with pytest.raises(OutboundError) as info:
            request("GET", server.url).json()
        assert info.value.kind == "protocol"
    for bad in ("ftp://127.0.0.1/", "not a url", "http://"):
        with pytest.raises(OutboundError) as info:
            request("GET", bad)
        assert info.value.kind == "invalid_url"


def test_the_sync_variant_refuses_to_block_an_event_loop() -> None:
    async def inside() -> None:
        request("GET", "http://127.0.0.1:1")

    with pytest.raises(RuntimeError, match="request_async"):
        asyncio.run(inside())


# --- its callers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("respond", [DRIP_HEADERS, ENDLESS_UNTIL_CLOSE], ids=["drip", "endless"])
def test_relay_calls_to_an_enclave_are_bounded(respond: Respond) -> None:
    with peer(respond) as server:
        client = EnclaveClient(server.url, max_bytes=1 << 20)
        for call in (
            lambda: client.model_name("0x" + "00" * 32, 1.0),
            lambda: client.infer("iris", "0x01", IRIS_INPUT, 1.0),
            lambda: client.receipt_batch(0, 10, 1.0),
        ):
            _, error, elapsed = bounded(call, 10)
            assert isinstance(error, OutboundError) and error.kind in ("deadline", "too_large"), error
            assert elapsed < 3


@pytest.mark.parametrize("respond", [DRIP_BODY, ENDLESS_CHUNKED], ids=["drip", "endless"])
def test_attesting_an_enclave_is_bounded(respond: Respond) -> None:
    with peer(respond) as server:
        _, error, elapsed = bounded(lambda: attest_enclave(server.url, Policy(), timeout=1.0), 10)
    assert isinstance(error, RegistrationError) and "cannot fetch an attestation" in str(error)
    assert elapsed < 3


def test_register_command_bounds_the_verifier_call(
    chain: Chain, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_KEY", ANVIL_KEYS[0])
    with peer(ENDLESS_CHUNKED) as verifier:
        argv = ["relay", "register", "--enclave", "http://127.0.0.1:1", "--rpc", chain.url]
        argv += [
            "--contract",
            chain.contract.address,
            "--verifier-url",
            verifier.url,
            "--key-env",
            "ADMIN_KEY",
        ]
        code, error, _ = bounded(lambda: main(argv), 20)
    assert error is None and code == 1
    assert "response larger than 1048576 bytes" in capsys.readouterr().out


# --- the batch credential -----------------------------------------------------------------------------

EMPTY_BATCH = {"from": 0, "count": 0, "next": 0, "root": "0x" + "00" * 32, "signature": "0x", "receipts": []}


def test_enclave_client_sends_the_batch_token_only_to_receipts_batch() -> None:
    with peer(answer(200, EMPTY_BATCH)) as server:
        assert EnclaveClient(server.url, batch_token="tok-1").receipt_batch(5, 7, 5.0)["count"] == 0
        assert server.header(0, "authorization") == "Bearer tok-1"
        assert orjson.loads(server.body(0)) == {"from": 5, "max": 7}
        EnclaveClient(server.url).receipt_batch(0, 1, 5.0)
        assert server.header(1, "authorization") is None
    with peer(answer(200, {"models": []})) as server:
        EnclaveClient(server.url, batch_token="tok-1").model_name("0x00", 5.0)
        assert server.header(0, "authorization") is None
    assert "tok-1" not in repr(EnclaveClient("http://x", batch_token="tok-1"))


def test_relay_anchors_with_the_batch_token(chain: Chain, relay_db: RelayDb) -> None:
    with peer(answer(200, EMPTY_BATCH)) as server:
        relay = Relay(
            chain.w3,
            chain.contract,
            chain.relay.account,
            [server.url],
            RelayState(relay_db.url),
            chain_id=chain.w3.eth.chain_id,
            anchor_min=1,
            batch_token="relay-secret",
        )
        relay.enclaves[0].signer = chain.enclave  # known already: the first call is the batch
        relay.enclaves[0].signer_checked = time.monotonic()
        relay.anchor_batches()
        assert server.header(0, "authorization") == "Bearer relay-secret"


def test_the_real_enclave_serves_batches_to_the_token_holder_only(server: str) -> None:
    batch = EnclaveClient(server, batch_token=BATCH_TOKEN).receipt_batch(0, 1, 10.0)
    assert {"count", "next"} <= set(batch)
    for client in (EnclaveClient(server), EnclaveClient(server, batch_token="wrong")):
        with pytest.raises(OutboundError) as info:
            client.receipt_batch(0, 1, 10.0)
        assert info.value.status == 401


def _relay_run(chain: Chain, enclave: str, db: RelayDb, *extra: str) -> list[str]:
    return [
        VERINFER,
        "relay",
        "run",
        "--rpc",
        chain.url,
        "--contract",
        chain.contract.address,
        "--enclave",
        enclave,
        "--db",
        db.url,
        "--poll",
        "0.1",
        "--chain-id",
        str(chain.w3.eth.chain_id),
        *extra,
    ]


def test_relay_run_reads_the_batch_token_from_the_environment(chain: Chain, relay_db: RelayDb) -> None:
    token = "batch-token-" + os.urandom(8).hex()
    env = {**os.environ, "VERINFER_KEY": ANVIL_KEYS[4], "RELAY_BATCH_TOKEN": token}
    # One answer to everything: an empty batch that also names the enclave key (the relay's GET /attestation).
    with peer(answer(200, {**EMPTY_BATCH, "enclave": chain.enclave})) as enclave:
        args = _relay_run(chain, enclave.url, relay_db, "--anchor-min", "1")
        process = subprocess.Popen(
            [*args, "--batch-token-env", "RELAY_BATCH_TOKEN"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not any(b"/receipts/batch" in r for r in enclave.requests) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop(process)
        output = process.stdout.read() if process.stdout else b""
        batch_requests = [i for i, r in enumerate(enclave.requests) if b"/receipts/batch" in r]
        assert batch_requests, output.decode()
        assert enclave.header(batch_requests[0], "authorization") == f"Bearer {token}"
    assert token.encode() not in output
    assert b"RELAY_BATCH_TOKEN" in output  # it says where the token came from, never what it is


@pytest.mark.parametrize("value", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_relay_run_refuses_a_missing_batch_token(
    value: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERINFER_KEY", ANVIL_KEYS[4])
    if value is None:
        monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    else:
        monkeypatch.setenv("NO_SUCH_TOKEN_VAR", value)
    argv = ["relay", "run", "--rpc", "http://127.0.0.1:1", "--contract", "0x" + "11" * 20, "--enclave", "x"]
    assert main([*argv, "--chain-id", "1", "--batch-token-env", "NO_SUCH_TOKEN_VAR"]) == 2
    assert "NO_SUCH_TOKEN_VAR is unset or empty" in capsys.readouterr().err
