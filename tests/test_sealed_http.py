"""Sealed requests over HTTP: the Oblivious HTTP gateway against a real `verinfer serve --nsm sim`.

The requests here are made by tests/ohttp_reference.py, an OHTTP client written from the RFCs that shares
no code with the server, and Binary HTTP encoded by hand below (RFC 9292 section 3): the gateway must work
for a client that is not itself. verinfer.client's sealed mode is tested at the end.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from attestation import Policy, TrustedRoot, decode
from enclave.gateway import ReplayGuard
from protocol.manifest import load_manifest
from protocol.sealing import commit_input, commit_output
from verinfer.client import AsyncClient, AttestationError, Client
from verinfer.processes import VERINFER, free_port, stop
from verinfer.verify import verify_inference

from . import ohttp_reference as ref

GATEWAY = "/.well-known/ohttp-gateway"
OHTTP_REQ = {"content-type": "message/ohttp-req"}
# Distinctive values, so their presence anywhere in captured bytes would be unmistakable.
FEATURES = [6.123457, 2.987654, 4.456789, 1.345678]
AES_128_GCM, CHACHA20_POLY1305 = 0x0001, 0x0003
MANIFEST = load_manifest(Path(__file__).resolve().parents[1] / "models")


# --- Binary HTTP by hand (RFC 9292 section 3, known-length messages) -------------------------------------


def varint(value: int) -> bytes:
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return struct.pack(">H", value | 0x4000)
    if value < 1 << 30:
        return struct.pack(">I", value | 0x80000000)
    return struct.pack(">Q", value | 0xC000000000000000)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    size = 1 << (data[at] >> 6)
    value = int.from_bytes(data[at : at + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, at + size


def field(value: bytes) -> bytes:
    return varint(len(value)) + value


def bhttp_request(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A known-length request (framing indicator 0): control data, header section, content, no trailers."""
    control = field(b"POST") + field(b"https") + field(b"enclave") + field(path.encode())
    section = b"".join(field(name) + field(value) for name, value in headers)
    return varint(0) + control + field(section) + field(body) + varint(0)


def bhttp_response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """A known-length response (framing indicator 1), no informational responses: status, headers, body."""
    indicator, at = read_varint(data, 0)
    assert indicator == 1
    status, at = read_varint(data, at)
    assert status >= 200
    length, at = read_varint(data, at)
    end, headers = at + length, {}
    while at < end:
        size, at = read_varint(data, at)
        name, at = data[at : at + size], at + size
        size, at = read_varint(data, at)
        headers[name], at = data[at : at + size], at + size
    length, at = read_varint(data, at)
    return status, headers, data[at : at + length]


# --- helpers --------------------------------------------------------------------------------------------


def key_config(url: str) -> bytes:
    answer = httpx.get(url + GATEWAY, headers={"accept": "application/ohttp-keys"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/ohttp-keys"
    configs = ref.split_keys_body(answer.content)
    assert len(configs) == 1
    return configs[0]


def infer_body(request_id: str | None = None) -> bytes:
    body: dict[str, object] = {"model": "iris-mlp", "inputs": [FEATURES]}
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


def sealed_post(
    url: str,
    path: str,
    body: bytes,
    *,
    salt: bytes | None = None,
    date: datetime | None = None,
    aead: int = AES_128_GCM,
    target: str | None = None,
) -> tuple[httpx.Response, bytes, Callable[[bytes], bytes]]:
    """POST one sealed request; (outer answer, the enc_request sent, the function that opens the answer)."""
    headers = [(b"content-type", b"application/json")]
    if salt is not None:
        headers.append((b"verinfer-input-salt", ("0x" + salt.hex()).encode()))
    if date is not None:
        headers.append((b"date", format_datetime(date, usegmt=True).encode()))
    enc_request, open_response = ref.encapsulate(key_config(url), bhttp_request(path, body, headers), aead)
    answer = httpx.post((target or url) + GATEWAY, content=enc_request, headers=OHTTP_REQ)
    return answer, enc_request, open_response


def trust(server_pki: Path) -> Policy:
    return Policy(root=TrustedRoot.from_file(server_pki / "root.pem"))


# --- the attested key -----------------------------------------------------------------------------------


def test_the_attestation_binds_the_gateway_key(server: str) -> None:
    attestation = httpx.get(server + "/attestation").json()
    document = decode(__import__("base64").b64decode(attestation["document"])).document
    assert document.user_data is not None and len(document.user_data) == 64
    assert document.user_data[:32].hex() == attestation["manifestDigest"][2:]
    assert document.user_data[32:].hex() == attestation["encryptionKey"][2:]
    key_id, public_key, suites = ref.parse_key_config(key_config(server))
    assert public_key == document.user_data[32:]
    assert (1, AES_128_GCM) in suites and (1, CHACHA20_POLY1305) in suites
    import hashlib

    assert key_id == hashlib.sha256(public_key).digest()[0]


# --- round trips with the independent client ------------------------------------------------------------


@pytest.mark.parametrize("aead", [AES_128_GCM, CHACHA20_POLY1305])
def test_an_independent_client_round_trips_infer(server: str, server_pki: Path, aead: int) -> None:
    salt = bytes(range(32))
    request_id = "0x" + "ab" * 32
    body = infer_body(request_id)
    answer, _, open_response = sealed_post(server, "/infer", body, salt=salt, aead=aead)
    assert answer.status_code == 200 and answer.headers["content-type"] == "message/ohttp-res"
    status, headers, content = bhttp_response(open_response(answer.content))
    assert status == 200 and headers[b"verinfer-input-salt"] == ("0x" + salt.hex()).encode()
    response = orjson.loads(content)
    attestation = httpx.get(server + "/attestation", headers={"accept": "application/cbor"}).content
    request = orjson.loads(body)

    options = {"policy": trust(server_pki), "request": request, "manifest": MANIFEST, "allow_any_image": True}
    sealed = verify_inference(response, attestation, salt=salt, **options)
    assert sealed.verified and {c.name for c in sealed.checks if c.status == "pass"} >= {
        "input_hash",
        "model",
    }
    # The receipt commits to the hashes: checked without the salt, they do not match.
    unsalted = verify_inference(response, attestation, **options)
    failed = {check.name for check in unsalted.checks if check.status == "fail"}
    assert failed == {"input_hash", "output_hash"}
    # The same request in clear is signed over the plain hashes, which the commitments hide.
    clear = httpx.post(server + "/infer", content=body).json()
    assert clear["outputs"] == response["outputs"]
    plain_in, plain_out = (
        bytes.fromhex(clear["receipt"]["inputHash"][2:]),
        bytes.fromhex(clear["receipt"]["outputHash"][2:]),
    )
    assert response["receipt"]["inputHash"] == "0x" + commit_input(salt, plain_in).hex()
    assert response["receipt"]["outputHash"] == "0x" + commit_output(salt, plain_out).hex()


def test_v2_inference_goes_sealed_too(server: str, server_pki: Path) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": FEATURES}]}
    )
    answer, _, open_response = sealed_post(server, "/v2/models/iris-mlp/infer", body)
    status, headers, content = bhttp_response(open_response(answer.content))
    assert status == 200
    salt = bytes.fromhex(headers[b"verinfer-input-salt"].decode()[2:])  # chosen by the enclave
    attestation = httpx.get(server + "/attestation", headers={"accept": "application/cbor"}).content
    report = verify_inference(
        orjson.loads(content),
        attestation,
        policy=trust(server_pki),
        request=orjson.loads(body),
        model="iris-mlp",
        allow_any_image=True,
        salt=salt,
    )
    assert report.ok, report.checks


def test_an_inner_refusal_travels_sealed(server: str) -> None:
    answer, _, open_response = sealed_post(server, "/infer", b'{"model": "no-such-model", "inputs": [[1]]}')
    assert answer.status_code == 200  # the outer exchange worked; the host cannot tell the inner answer
    status, _, content = bhttp_response(open_response(answer.content))
    assert status == 404 and orjson.loads(content)["code"] == "unknown_model"


# --- refusals -------------------------------------------------------------------------------------------


def test_a_replayed_request_is_refused(server: str) -> None:
    answer, enc_request, _ = sealed_post(server, "/infer", infer_body())
    assert answer.status_code == 200
    again = httpx.post(server + GATEWAY, content=enc_request, headers=OHTTP_REQ)
    assert again.status_code == 400 and again.headers["content-type"] == "application/problem+json"
    assert again.json()["code"] == "replayed_request"


def test_a_tampered_request_is_refused_and_the_server_stays_up(server: str) -> None:
    enc_request, _ = ref.encapsulate(
        key_config(server), bhttp_request("/infer", infer_body(), []), AES_128_GCM
    )
    for position in (0, 3, 10, len(enc_request) - 1):
        tampered = bytearray(enc_request)
        tampered[position] ^= 0x01
        answer = httpx.post(server + GATEWAY, content=bytes(tampered), headers=OHTTP_REQ)
        assert answer.status_code == 400, position
        assert answer.json()["code"] == "sealed_request_rejected"
    truncated = httpx.post(server + GATEWAY, content=enc_request[:20], headers=OHTTP_REQ)
    assert truncated.status_code == 400
    assert (
        httpx.post(server + GATEWAY, content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    )
    assert httpx.get(server + "/v2/health/ready").status_code == 200


def test_an_unknown_key_id_names_the_key_problem(server: str) -> None:
    config = bytearray(key_config(server))
    config[0] ^= 0xFF  # another key id, same key: the gateway must refuse it as an unknown configuration
    enc_request, _ = ref.encapsulate(bytes(config), bhttp_request("/infer", infer_body(), []), AES_128_GCM)
    answer = httpx.post(server + GATEWAY, content=enc_request, headers=OHTTP_REQ)
    assert answer.status_code == 400
    assert answer.json()["type"] == "https://iana.org/assignments/http-problem-types#ohttp-key"


def test_a_stale_date_is_refused_inside_the_seal(server: str) -> None:
    stale = datetime.now(UTC) - timedelta(hours=1)
    answer, _, open_response = sealed_post(server, "/infer", infer_body(), date=stale)
    status, headers, content = bhttp_response(open_response(answer.content))
    assert status == 400 and b"date" in headers
    assert orjson.loads(content)["type"] == "https://iana.org/assignments/http-problem-types#date"
    fresh, _, open_fresh = sealed_post(server, "/infer", infer_body(), date=datetime.now(UTC))
    assert bhttp_response(open_fresh(fresh.content))[0] == 200


def test_a_malformed_salt_is_refused(server: str) -> None:
    enc_request, open_response = ref.encapsulate(
        key_config(server),
        bhttp_request("/infer", infer_body(), [(b"verinfer-input-salt", b"0x1234")]),
        AES_128_GCM,
    )
    answer = httpx.post(server + GATEWAY, content=enc_request, headers=OHTTP_REQ)
    status, _, content = bhttp_response(open_response(answer.content))
    assert status == 400 and orjson.loads(content)["code"] == "invalid_salt"


# --- what the host sees ---------------------------------------------------------------------------------


class Recorder:
    """A TCP relay that keeps every byte it forwards, both ways: what a host on the path sees."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.seen = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                with self.lock:
                    self.seen += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@contextmanager
def host_proxy(upstream_port: int, log: Path) -> Iterator[str]:
    """The real parent-side `verinfer proxy` (TCP upstream here), its output captured."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [VERINFER, "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/v2/health/live")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


def plaintext_markers(body: bytes, answer: bytes) -> list[bytes]:
    """Byte strings that would betray the request or its answer: JSON text, float32 bytes, names, outputs."""
    markers = [body, b"iris-mlp", b"/infer", b"probabilities"]
    markers += [repr(value).encode() for value in FEATURES]
    markers += [np.float32(value).tobytes() for value in FEATURES]
    markers += [np.asarray(FEATURES, dtype="<f4").tobytes()]
    for output in orjson.loads(answer)["outputs"]:
        markers += [repr(value).encode() for value in output["data"] if isinstance(value, float)]
    return markers


def test_the_host_proxy_sees_only_ciphertext(server: str, tmp_path: Path) -> None:
    recorder = Recorder(server)
    log = tmp_path / "proxy.log"
    try:
        with host_proxy(recorder.port, log) as proxy:
            body = infer_body()
            answer, _, open_response = sealed_post(server, "/infer", body, target=proxy)
            status, _, content = bhttp_response(open_response(answer.content))
            assert status == 200
    finally:
        recorder.close()
    seen = bytes(recorder.seen) + log.read_bytes()
    assert b"message/ohttp-req" in seen and b"/.well-known/ohttp-gateway" in seen  # it did pass this way
    for marker in plaintext_markers(body, content):
        assert marker not in seen, marker


# --- the verifying client -------------------------------------------------------------------------------


def test_the_sealed_client_verifies_and_sends_only_ciphertext(server: str, server_pki: Path) -> None:
    recorder = Recorder(server)
    try:
        with Client(
            f"http://127.0.0.1:{recorder.port}", trust(server_pki), allow_any_image=True, sealed=True
        ) as c:
            result = c.infer("iris-mlp", [FEATURES])
            clear = httpx.post(server + "/infer", content=infer_body()).json()
    finally:
        recorder.close()
    expected = np.asarray(clear["outputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(result["probabilities"].ravel(), expected)
    seen = bytes(recorder.seen)
    for marker in [b'iris-mlp","inputs', *(np.float32(v).tobytes() for v in FEATURES), b"6.123457"]:
        assert marker not in seen, marker


class SwappedKeys(httpx.BaseTransport):
    """A man in the middle who serves a key configuration of their own."""

    def __init__(self, inner: httpx.BaseTransport, config: bytes) -> None:
        self.inner, self.config = inner, config

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == GATEWAY:
            body = struct.pack(">H", len(self.config)) + self.config
            return httpx.Response(200, content=body, headers={"content-type": "application/ohttp-keys"})
        return self.inner.handle_request(request)


def test_the_client_refuses_a_key_the_attestation_does_not_bind(server: str, server_pki: Path) -> None:
    genuine = key_config(server)
    _, attacker_public = ref.derive_key_pair(b"attacker" * 4)
    forged = genuine[:3] + attacker_public + genuine[35:]
    transport = SwappedKeys(httpx.HTTPTransport(), forged)
    client = Client(server, trust(server_pki), allow_any_image=True, sealed=True, transport=transport)
    with client, pytest.raises(AttestationError) as refused:
        client.infer("iris-mlp", [FEATURES])
    assert refused.value.code == "key_not_bound"


def test_a_sealed_completion_verifies_and_leaves_no_public_signature(server: str, server_pki: Path) -> None:
    with Client(server, trust(server_pki), allow_any_image=True, sealed=True) as client:
        reply = client.complete("Ethereum is", max_tokens=8, temperature=0)
    with Client(server, trust(server_pki), allow_any_image=True) as client:
        clear = client.complete("Ethereum is", max_tokens=8, temperature=0)
    assert reply.text == clear.text and reply.text
    assert reply.receipt["inputHash"] != clear.receipt["inputHash"]  # a commitment, not keccak256(body)
    completion_id = "cmpl-" + reply.receipt["requestId"][2:]
    assert httpx.get(f"{server}/v1/signature/{completion_id}").status_code == 404
    assert httpx.get(f"{server}/v1/signature/cmpl-{clear.receipt['requestId'][2:]}").status_code == 200


def test_the_async_client_seals_too(server: str, server_pki: Path) -> None:
    async def ask() -> tuple[np.ndarray, str]:
        async with AsyncClient(server, trust(server_pki), allow_any_image=True, sealed=True) as client:
            result = await client.infer("iris-mlp", [FEATURES])
            with pytest.raises(ValueError, match="sealed client answers whole completions"):
                await client.complete_stream("Ethereum is", max_tokens=4)
            return result["probabilities"], result.receipt["inputHash"]

    probabilities, input_hash = asyncio.run(ask())
    clear = httpx.post(server + "/infer", content=infer_body()).json()
    assert np.array_equal(probabilities.ravel(), np.asarray(clear["outputs"][0]["data"], dtype=np.float32))
    assert input_hash != clear["receipt"]["inputHash"]


def test_a_dated_request_is_never_accepted_after_its_enc_is_forgotten() -> None:
    """Dates run from window - skew in the past to skew ahead, so a replay after the window is refused by
    its date; an early eviction (the bounded memory) raises the oldest acceptable date past it too."""
    now = [1_000_000.0]
    guard = ReplayGuard(window_s=600, skew_s=60, clock=lambda: now[0])
    t0 = now[0]
    assert guard.accepts_date(t0 + 60, t0) and not guard.accepts_date(t0 + 61, t0)
    assert guard.accepts_date(t0 - 540, t0) and not guard.accepts_date(t0 - 541, t0)
    assert guard.admit(b"a" * 32) and not guard.admit(b"a" * 32)  # dated t0 + 60, say
    now[0] = t0 + 601  # its enc is forgotten now ...
    assert guard.admit(b"a" * 32)
    assert not guard.accepts_date(t0 + 60, now[0])  # ... but its date no longer passes

    small = ReplayGuard(window_s=600, skew_s=60, max_entries=1, clock=lambda: now[0])
    small.admit(b"b" * 32)
    now[0] += 1
    small.admit(b"c" * 32)  # evicts b, which arrived a second ago, long before its window ended
    assert not small.accepts_date(now[0] - 1 + 59, now[0]) and small.accepts_date(now[0] - 1 + 61, now[0])
    with pytest.raises(ValueError, match="skew"):
        ReplayGuard(window_s=60, skew_s=60)
