"""The relay's attestation verifier service (`verinfer relay verifier`) as a real server on loopback: its body
limit, its validation, its challenge nonces, its enclave allow-list, and its documented API."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from eth_account import Account

from attestation import Policy, TrustedRoot
from protocol.receipts import recover_address
from relay.registration import Registration, registration_digest
from relay.verifier_service import MAX_CHAIN_ID, create_verifier_app
from verinfer.cli import main
from verinfer.processes import ANVIL_KEYS, VERINFER, free_port, stop

from .chain_fixtures import Chain
from .test_outbound_http import RawServer, drip

VERIFIER = Account.from_key(ANVIL_KEYS[1])
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MIB = 1024 * 1024


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under a real uvicorn on a free loopback port (in a thread, so tests can pick its settings)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the verifier did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def root(server: str, server_pki: Path) -> Path:
    """The simulator root the session's enclave server chains to (written when that server starts)."""
    return server_pki / "root.pem"


@pytest.fixture
def policy(root: Path) -> Policy:
    return Policy(root=TrustedRoot.from_file(root))


@pytest.fixture
def verifier(policy: Policy, server: str) -> Iterator[str]:
    """A verifier that may fetch from the session's enclave server only."""
    with serving(create_verifier_app(VERIFIER, policy, enclave_allow=[server])) as url:
        yield url


def registration_ok(response: httpx.Response, enclave_address: str, chain_id: int = 31337) -> None:
    assert response.status_code == 200, response.text
    registration = Registration.from_json(response.json())
    assert response.json()["enclave"] == enclave_address == registration.enclave
    digest = registration_digest(
        chain_id=chain_id,
        contract=CONTRACT,
        public_key=registration.public_key,
        image=registration.image_id,
        timestamp_ms=registration.attestation_timestamp_ms,
        user_data_hash=registration.user_data_hash,
        encryption_key=registration.encryption_key,
    )
    assert "0x" + recover_address(digest, registration.signature).hex() == VERIFIER.address.lower()


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    message: str = body["message"]
    return message


# --- 1. the body limit ----------------------------------------------------------------------------------


def rss(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of `pid`, bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {k: int(v.split()[0]) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.+)$", status, re.M)}
    return values["VmRSS"], values["VmHWM"]


def post_raw(port: int, head: bytes, body: Iterator[bytes]) -> tuple[int, bytes]:
    """Send `head` and then `body` from a thread (until the server stops reading) while reading the answer:
    a server that answers early and closes must still be heard."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(60)

    def send() -> None:
        try:
            for chunk in body:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection after answering: expected

    sender = threading.Thread(target=send, daemon=True)
    sock.sendall(head)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        with contextlib.suppress(OSError):  # already reset by the server
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(timeout=30)
    head_part, _, payload = data.partition(b"\r\n\r\n")
    return int(head_part.split(b" ", 2)[1]), payload


def _length(data: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(match.group(1)) if match else 1 << 62


def chunks(total: int, size: int = 1 * MIB) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


def chunked(total: int, size: int = 1 * MIB) -> Iterator[bytes]:
    for block in chunks(total, size):
        yield b"%x\r\n" % len(block) + block + b"\r\n"
    yield b"0\r\n\r\n"


@contextmanager
def verifier_process(*args: str, root: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [VERINFER, "relay", "verifier", "--port", str(port), "--root", str(root), *args],
        env={**os.environ, "VERINFER_KEY": ANVIL_KEYS[1]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else b""
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the verifier did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        stop(process)


def test_a_huge_body_is_refused_without_buffering_it(root: Path) -> None:
    with verifier_process(root=root) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        httpx.post(f"{url}/challenges")  # warm up the routes before measuring
        before, _ = rss(process.pid)
        size = 200 * MIB
        declared = b"POST /registrations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        status, body = post_raw(port, declared + b"Content-Length: %d\r\n\r\n" % size, chunks(size))
        assert status == 413 and orjson.loads(body)["code"] == "body_too_large"
        streamed = b"POST /registrations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, body = post_raw(port, streamed, chunked(size))
        assert status == 413 and orjson.loads(body)["message"] == "request body exceeds 65536 bytes"
        _, peak = rss(process.pid)
        print(f"RSS {before / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB after")
        assert peak - before < 32 * MIB, f"the service grew by {(peak - before) / MIB:.0f} MiB"
        assert httpx.get(url).status_code == 200  # and it still serves


def test_the_body_limit_is_configurable(root: Path) -> None:
    with verifier_process("--max-body", "1000", root=root) as (url, _):
        assert httpx.get(url).json()["max_body"] == 1000
        refused(httpx.post(f"{url}/registrations", content=b" " * 1001), 413, "body_too_large")
        small = {"enclave": "http://127.0.0.1:1", "chainId": 1, "contract": CONTRACT}
        refused(httpx.post(f"{url}/registrations", json=small), 403, "enclave_not_allowed")


# --- 2. validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chain_id",
    [-1, 0, MAX_CHAIN_ID + 1, 2**300, True, False, "1", 1.0, 1.5, None, [1], {"a": 1}],
    ids=repr,
)
def test_a_chain_id_out_of_range_is_a_bad_request(verifier: str, server: str, chain_id: object) -> None:
    body = {"enclave": server, "chainId": chain_id, "contract": CONTRACT}
    message = refused(httpx.post(f"{verifier}/registrations", json=body), 400, "invalid_request")
    assert "chainId" in message


def test_chain_ids_up_to_uint256_are_signed(verifier: str, server: str) -> None:
    address = httpx.get(f"{server}/attestation").json()["enclave"]
    for chain_id in (1, 2**64, MAX_CHAIN_ID):
        body = {"enclave": server, "chainId": chain_id, "contract": CONTRACT}
        registration_ok(httpx.post(f"{verifier}/registrations", json=body), address, chain_id)


def test_malformed_requests_are_bad_requests(verifier: str, server: str) -> None:
    good = {"enclave": server, "chainId": 1, "contract": CONTRACT}
    digits = b'{"enclave": "%s", "chainId": %s, "contract": "%s"}' % (
        server.encode(),
        b"9" * 5000,
        CONTRACT.encode(),
    )
    for body in (
        b"{",
        b"[]",
        b"null",
        digits,  # more digits than Python parses
        orjson.dumps({**good, "contract": "0x1234"}),
        orjson.dumps({**good, "contract": CONTRACT.lower().replace("0x5f", "0x5F")}),  # bad checksum
        orjson.dumps({**good, "enclave": 5}),
        orjson.dumps({**good, "enclave": "ftp://x"}),
        orjson.dumps({**good, "surplus": 1}),
        orjson.dumps({"chainId": 1, "contract": CONTRACT}),  # neither enclave nor attestation
        orjson.dumps({**good, "attestation": "AAAA", "nonce": "00" * 32}),  # both
        orjson.dumps({"chainId": 1, "contract": CONTRACT, "attestation": "AAAA"}),  # no nonce
        orjson.dumps({"chainId": 1, "contract": CONTRACT, "attestation": "AAAA", "nonce": "abc"}),
        orjson.dumps({"chainId": 1, "contract": CONTRACT, "attestation": "**", "nonce": "00" * 32}),
        orjson.dumps({"chainId": 1, "contract": CONTRACT, "attestation": {"x": 1}, "nonce": "00" * 32}),
    ):
        response = httpx.post(
            f"{verifier}/registrations", content=body, headers={"content-type": "application/json"}
        )
        refused(response, 400, "invalid_request")
    refused(httpx.get(f"{verifier}/registrations"), 405, "method_not_allowed")
    refused(httpx.get(f"{verifier}/nowhere"), 404, "not_found")


def test_openapi_documents_the_bodies_and_docs_render(verifier: str) -> None:
    spec = httpx.get(f"{verifier}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = schemas["RegistrationRequest"]["properties"]
    assert {"chainId", "contract", "attestation", "nonce", "enclave"} == set(request)
    assert request["chainId"]["minimum"] == 1 and request["chainId"]["maximum"] > 1e77  # JSON: a float
    assert set(schemas["RegistrationResponse"]["properties"]) == {
        "enclave",
        "publicKey",
        "imageId",
        "attestationTimestampMs",
        "userDataHash",
        "encryptionKey",
        "signature",
    }
    assert set(schemas["ChallengeResponse"]["properties"]) == {"nonce", "expiresInS"}
    registrations = spec["paths"]["/registrations"]["post"]
    assert registrations["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RegistrationRequest"
    )
    assert {"200", "400", "403", "413", "422"} <= set(registrations["responses"])
    assert "201" in spec["paths"]["/challenges"]["post"]["responses"]
    docs = httpx.get(f"{verifier}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


# --- 3a. posted documents for challenge nonces ----------------------------------------------------------


def challenge(verifier: str) -> str:
    response = httpx.post(f"{verifier}/challenges")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"nonce", "expiresInS"} and re.fullmatch("[0-9a-f]{64}", body["nonce"])
    nonce: str = body["nonce"]
    return nonce


def test_a_posted_attestation_for_a_challenge_is_signed_once(policy: Policy, server: str) -> None:
    with serving(create_verifier_app(VERIFIER, policy)) as verifier:  # no allow-list: it fetches nothing
        nonce = challenge(verifier)
        answer = httpx.get(f"{server}/attestation", params={"nonce": nonce}).json()
        body = {"attestation": answer["document"], "nonce": nonce, "chainId": 31337, "contract": CONTRACT}
        registration_ok(httpx.post(f"{verifier}/registrations", json=body), answer["enclave"])
        again = httpx.post(f"{verifier}/registrations", json=body)
        assert "unused" in refused(again, 422, "invalid_nonce")

        nonce = challenge(verifier)  # the whole GET /attestation answer, and a 0x nonce, work too
        answer = httpx.get(f"{server}/attestation", params={"nonce": nonce}).json()
        whole = {"attestation": answer, "nonce": "0x" + nonce, "chainId": 31337, "contract": CONTRACT}
        registration_ok(httpx.post(f"{verifier}/registrations", json=whole), answer["enclave"])


def test_a_nonce_must_be_issued_fresh_and_match(policy: Policy, server: str) -> None:
    with serving(create_verifier_app(VERIFIER, policy, challenge_ttl_s=0.5)) as verifier:
        assert httpx.get(verifier).json()["challenge_ttl_s"] == 0.5

        def post(document_nonce: str, nonce: str) -> httpx.Response:
            answer = httpx.get(f"{server}/attestation", params={"nonce": document_nonce}).json()
            body = {"attestation": answer["document"], "nonce": nonce, "chainId": 1, "contract": CONTRACT}
            return httpx.post(f"{verifier}/registrations", json=body)

        invented = os.urandom(32).hex()
        refused(post(invented, invented), 422, "invalid_nonce")  # never issued

        issued, other = challenge(verifier), challenge(verifier)
        assert "nonce" in refused(post(other, issued), 422, "attestation_rejected")  # made for another nonce
        refused(post(issued, issued), 422, "invalid_nonce")  # ... and that try used it up

        # A syntax error does not use the nonce up.
        bad = {"attestation": "**", "nonce": other, "chainId": 1, "contract": CONTRACT}
        refused(httpx.post(f"{verifier}/registrations", json=bad), 400, "invalid_request")
        assert post(other, other).status_code == 200

        late = challenge(verifier)
        time.sleep(0.7)
        refused(post(late, late), 422, "invalid_nonce")  # expired


def test_outstanding_challenges_are_bounded(policy: Policy) -> None:
    with serving(create_verifier_app(VERIFIER, policy, max_challenges=3, challenge_ttl_s=1.0)) as verifier:
        for _ in range(3):
            challenge(verifier)
        full = httpx.post(f"{verifier}/challenges")
        refused(full, 503, "too_many_challenges")
        assert full.headers["retry-after"] == "1"
        time.sleep(1.1)
        challenge(verifier)  # expired ones make room


# --- 3b. fetching, from allow-listed enclaves only ------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}",
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}",
        "http://127.0.0.1:{port}/other",
        "https://127.0.0.1:{port}",
        "http://user@127.0.0.1:{port}",
        "http://127.0.0.1:{port}?x=1",
    ],
)
def test_an_unlisted_enclave_is_refused_without_connecting(
    policy: Policy, server: str, template: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = template.format(port=listener.getsockname()[1])
        with serving(create_verifier_app(VERIFIER, policy, enclave_allow=[server])) as verifier:
            body = {"enclave": url, "chainId": 1, "contract": CONTRACT}
            response = httpx.post(f"{verifier}/registrations", json=body, timeout=30)
            assert response.status_code in (400, 403), response.text
            if response.status_code == 403:
                assert "--enclave-allow" in refused(response, 403, "enclave_not_allowed")
            listener.settimeout(0.5)
            with pytest.raises(TimeoutError):
                listener.accept()  # nothing ever connected


def test_an_allowed_enclave_is_fetched_whatever_the_spelling(policy: Policy, server: str) -> None:
    address = httpx.get(f"{server}/attestation").json()["enclave"]
    spelled = server.replace("127.0.0.1", "127.0.0.1") + "/"
    with serving(create_verifier_app(VERIFIER, policy, enclave_allow=[spelled])) as verifier:
        assert httpx.get(verifier).json()["allowed_enclaves"] == [server]
        for url in (server, server + "/", server.upper().replace("HTTP://", "http://")):
            body = {"enclave": url, "chainId": 31337, "contract": CONTRACT}
            registration_ok(httpx.post(f"{verifier}/registrations", json=body), address)


def test_a_slow_enclave_is_fetched_asynchronously_and_within_the_deadline(policy: Policy) -> None:
    with (
        RawServer(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b" ")) as slow,
        serving(create_verifier_app(VERIFIER, policy, enclave_allow=[slow.url], fetch_deadline_s=2.0)) as url,
    ):
        result: dict[str, Any] = {}

        def register() -> None:
            body = {"enclave": slow.url, "chainId": 1, "contract": CONTRACT}
            started = time.monotonic()
            result["response"] = httpx.post(f"{url}/registrations", json=body, timeout=30)
            result["elapsed"] = time.monotonic() - started

        thread = threading.Thread(target=register)
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert httpx.get(url, timeout=5).status_code == 200  # the event loop is not blocked by the fetch
        assert time.monotonic() - started < 0.5
        thread.join(timeout=30)
        message = refused(result["response"], 422, "attestation_rejected")
        assert "exceeded the 2.0 s deadline" in message and result["elapsed"] < 4


# --- the command line -----------------------------------------------------------------------------------


def test_verifier_usage_errors(root: Path) -> None:
    for options in (["--enclave-allow", "ftp://x"], ["--max-body", "0"], ["--challenge-ttl", "0"]):
        result = subprocess.run(
            [VERINFER, "relay", "verifier", "--port", str(free_port()), "--root", str(root), *options],
            env={**os.environ, "VERINFER_KEY": ANVIL_KEYS[1]},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr


def test_register_command_lets_an_allowing_verifier_fetch(
    snapshot: Chain, server: str, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("ADMIN_KEY", ANVIL_KEYS[0])

    def register(url: str) -> int:
        return main(
            [
                "relay",
                "register",
                "--enclave",
                server,
                "--rpc",
                snapshot.url,
                "--contract",
                snapshot.contract.address,
                "--verifier-url",
                url,
                "--verifier-fetches",
                "--key-env",
                "ADMIN_KEY",
            ]
        )

    with verifier_process(root=root) as (url, _):
        assert register(url) == 1
        assert "enclave_not_allowed" in capsys.readouterr().out
    with verifier_process("--enclave-allow", server, root=root) as (url, _):
        assert register(url) == 0, capsys.readouterr().out
        assert "registered enclave" in capsys.readouterr().out


def test_a_posted_document_is_the_one_the_enclave_made(policy: Policy, server: str) -> None:
    """A document altered in transit (here: one byte of its signature) is rejected, the nonce spent."""
    with serving(create_verifier_app(VERIFIER, policy)) as verifier:
        nonce = challenge(verifier)
        document = bytearray(
            base64.b64decode(httpx.get(f"{server}/attestation", params={"nonce": nonce}).json()["document"])
        )
        document[-1] ^= 1
        body = {
            "attestation": base64.b64encode(document).decode(),
            "nonce": nonce,
            "chainId": 1,
            "contract": CONTRACT,
        }
        refused(httpx.post(f"{verifier}/registrations", json=body), 422, "attestation_rejected")
