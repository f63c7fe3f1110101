"""One hardened HTTP edge: each problem found on the pre-split server (8432830) has a test here that failed
there and passes now. Real `verinfer serve` processes, except where a fault must be injected in-process."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.batch_access import BatchAccess
from enclave.service import EnclaveService
from protocol.manifest import load_manifest
from verinfer.processes import VERINFER, batch_token_args, bearer, free_port, stop, wait_ready

from .conftest import BATCH_TOKEN, MAX_BODY

REPO = Path(__file__).resolve().parent.parent
IRIS = {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}


def v2_body(**tensor: object) -> dict[str, object]:
    base = {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}
    return {"inputs": [{**base, **tensor}]}


def counter(server: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{server}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == wanted:
                return float(value)
    return 0.0


# --- bodies are bounded on every route --------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server whose process we can measure (the session server's pid is not exposed)."""
    port = free_port()
    pki = tmp_path_factory.mktemp("edge-pki")
    process = subprocess.Popen(
        [VERINFER, "serve", "--port", str(port), "--nsm", "sim", "--pki-dir", str(pki)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process
    finally:
        stop(process)


def send_raw(port: int, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Write a request by hand (declared or chunked body), stop early if the server answers, read it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered 413 and closed: exactly what we want
        sock.settimeout(10)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


@pytest.mark.parametrize("path", ["/receipts/batch", "/infer", "/v2/models/iris-mlp/infer", "/models"])
def test_declared_oversized_body_is_refused_before_reading(own_server, path: str) -> None:
    url, process = own_server
    port = int(url.rsplit(":", 1)[1])
    size = 200 * 1024 * 1024
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    before = rss_kib(process.pid)
    answer = send_raw(port, head, iter([b"x" * 65536] * 64))  # 4 MiB sent of the 200 MiB declared
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    family = "error" if path.startswith("/v2") else "message"
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "body_too_large"
    assert family.encode() in answer
    assert rss_kib(process.pid) - before < 32 * 1024
    assert httpx.post(f"{url}/infer", json=IRIS).status_code == 200


def test_chunked_oversized_body_is_refused_as_it_grows(own_server) -> None:
    url, process = own_server
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /receipts/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    before = rss_kib(process.pid)
    answer = send_raw(port, head, iter([chunk] * 3200))  # up to 200 MiB, if the server kept reading
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss_kib(process.pid) - before < 32 * 1024
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


def test_session_server_limit_is_the_configured_one(server: str) -> None:
    ok = httpx.post(f"{server}/receipts/batch", content=b" " * (MAX_BODY - 1), headers=bearer(BATCH_TOKEN))
    assert ok.status_code == 400  # read and parsed (not JSON), not refused for size
    too_big = httpx.post(f"{server}/receipts/batch", content=b" " * (MAX_BODY + 1))
    assert too_big.status_code == 413 and too_big.json()["code"] == "body_too_large"


# --- nothing non-finite is signed; shapes, booleans, odd JSON types ---------------------------------------


def test_model_overflow_to_non_finite_is_422_and_unsigned(server: str) -> None:
    before = counter(server, "verinfer_inferences_total", model="iris-mlp")
    response = httpx.post(f"{server}/infer", json={"model": "iris-mlp", "inputs": [[1e38, 1e38, 1e38, 3e38]]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "non_finite_output" and "receipt" not in body
    assert b"null" not in response.content
    v2 = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(data=[1e38, 1e38, 1e38, 3e38]))
    assert v2.status_code == 422 and v2.json()["code"] == "non_finite_output" and "error" in v2.json()
    assert counter(server, "verinfer_inferences_total", model="iris-mlp") == before


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_inputs_are_refused(server: str, value: str) -> None:
    body = b'{"model": "iris-mlp", "inputs": [[%s, 1, 2, 3]]}' % value.encode()
    response = httpx.post(f"{server}/infer", content=body)
    assert response.status_code == 400 and response.json()["code"] in {"invalid_value", "invalid_json"}


def test_huge_declared_shape_is_400_not_500(server: str) -> None:
    shape = [2**40, 2**40, 2**40]
    response = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(shape=shape))
    assert response.status_code == 400 and response.json()["code"] == "tensor_too_large"
    response = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(shape=[2**63, 2**63]))
    assert response.status_code == 400
    # numpy's int64 product of [2^62, 4] wraps to 0, which "matched" an empty data list and then failed
    # to reshape: a 500 before the fix.
    wrapped = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(shape=[2**62, 4], data=[]))
    assert wrapped.status_code == 400 and wrapped.json()["code"] == "tensor_too_large"


@pytest.mark.parametrize("data", [[[True, 3.0, 5.2, 2.3]], [[1.5, 2, False, 1]], [[1, 2, 3, True]]])
def test_booleans_mixed_with_numbers_are_not_numbers(server: str, data: list) -> None:
    response = httpx.post(f"{server}/infer", json={"model": "iris-mlp", "inputs": data})
    assert response.status_code == 400 and response.json()["code"] == "invalid_dtype"
    v2 = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(data=data[0]))
    assert v2.status_code == 400 and v2.json()["code"] == "invalid_dtype"


def test_a_boolean_elsewhere_in_the_body_does_not_refuse_numbers(server: str) -> None:
    body = {**v2_body(), "parameters": {"flag": True}}
    assert httpx.post(f"{server}/v2/models/iris-mlp/infer", json=body).status_code == 200


@pytest.mark.parametrize("datatype", [["FP32"], {"a": 1}, 7, None])
def test_unhashable_datatype_is_400(server: str, datatype: object) -> None:
    v2 = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=v2_body(datatype=datatype))
    assert v2.status_code == 400 and v2.json()["code"] == "invalid_dtype"
    tensor = {"name": "features", "datatype": datatype, "data": [[6.7, 3.0, 5.2, 2.3]]}
    plain = httpx.post(f"{server}/infer", json={"model": "iris-mlp", "inputs": [tensor]})
    assert plain.status_code == 400 and plain.json()["code"] == "invalid_dtype"


@pytest.mark.parametrize("name", [["probabilities"], {"x": 1}, 3])
def test_odd_requested_output_name_is_400(server: str, name: object) -> None:
    body = {**v2_body(), "outputs": [{"name": name}]}
    response = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=body)
    assert response.status_code == 400 and response.json()["code"] == "unknown_output"


@pytest.mark.parametrize("start", [2**63, 2**64 + 5, 10**30])
def test_batch_from_beyond_int64_is_400(server: str, start: int) -> None:
    body = orjson.dumps({"from": 0, "max": 1}).replace(b"0", str(start).encode(), 1)
    response = httpx.post(f"{server}/receipts/batch", content=body, headers=bearer(BATCH_TOKEN))
    assert response.status_code == 400, response.text
    assert response.json()["code"] in {"invalid_batch", "invalid_json"}


def test_batch_far_past_the_log_end_is_empty(server: str) -> None:
    body = {"from": 2**63 - 1, "max": 2**63 - 1}
    response = httpx.post(f"{server}/receipts/batch", json=body, headers=bearer(BATCH_TOKEN))
    assert response.status_code == 200 and response.json()["count"] == 0


# --- 500s are counted, and answered in the family's shape ------------------------------------------------


@pytest.fixture(scope="module")
def in_process_service(tmp_path_factory: pytest.TempPathFactory) -> EnclaveService:
    nsm = open_nsm("sim", pki_dir=tmp_path_factory.mktemp("inproc-pki"))
    return EnclaveService(load_manifest(REPO / "models"), nsm)


def serve_in_process(app: object, calls: list[tuple[str, str, dict[str, object]]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://enclave") as client:
            return [await client.request(method, path, **kwargs) for method, path, kwargs in calls]  # type: ignore[arg-type]

    return asyncio.run(run())


@pytest.mark.parametrize("fast_path", [True, False])
def test_unexpected_failures_are_counted_500s(in_process_service, monkeypatch, fast_path: bool) -> None:
    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(in_process_service, "sign_outputs", broken)  # batched and unbatched runs alike
    monkeypatch.setattr(in_process_service, "attestation", broken)
    app = create_app(in_process_service, fast_path=fast_path)
    v2 = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    infer, v2_infer, attest, metrics = serve_in_process(
        app,
        [
            ("POST", "/infer", {"json": IRIS}),
            ("POST", "/v2/models/iris-mlp/infer", {"json": v2}),
            ("GET", "/attestation", {}),
            ("GET", "/metrics", {}),
        ],
    )
    assert infer.status_code == 500 and infer.json() == {
        "code": "internal",
        "message": "internal error; nothing was signed",
    }
    assert v2_infer.status_code == 500 and v2_infer.json()["error"]
    assert attest.status_code == 500 and attest.json()["code"] == "internal"
    assert 'verinfer_errors_total{code="internal"} 3.0' in metrics.text
    assert 'verinfer_requests_total{endpoint="infer",status="500"} 1.0' in metrics.text
    assert 'verinfer_requests_total{endpoint="attestation",status="500"} 1.0' in metrics.text


def test_fallback_routes_behave_like_the_fast_path(in_process_service) -> None:
    calls: list[tuple[str, str, dict[str, object]]] = [
        ("POST", "/infer", {"json": IRIS}),
        ("POST", "/infer", {"json": {"model": "nope", "inputs": [1]}}),
    ]
    fast = serve_in_process(create_app(in_process_service), calls)
    slow = serve_in_process(create_app(in_process_service, fast_path=False), calls)
    assert [r.status_code for r in fast] == [r.status_code for r in slow] == [200, 404]
    assert fast[1].json() == slow[1].json()
    assert fast[0].json()["outputs"] == slow[0].json()["outputs"]


# --- methods, routes, docs, request ids, access log --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/infer", "POST"),
        ("PUT", "/infer", "POST"),
        ("GET", "/receipts/batch", "POST"),
        ("POST", "/attestation", "GET"),
        ("DELETE", "/models", "GET"),
        ("GET", "/v2/models/iris-mlp/infer", "POST"),
        ("POST", "/v2/health/live", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(server: str, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, f"{server}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    body = response.json()
    assert body["code"] == "method_not_allowed"
    assert ("error" in body) == path.startswith("/v2")


def test_unknown_route_is_404_in_the_family_shape(server: str) -> None:
    plain = httpx.get(f"{server}/nope")
    assert plain.status_code == 404 and plain.json()["code"] == "not_found" and "message" in plain.json()
    v2 = httpx.get(f"{server}/v2/nope")
    assert v2.status_code == 404 and v2.json()["code"] == "not_found" and "error" in v2.json()


def test_openapi_covers_every_route_and_docs_work(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json").json()
    paths = schema["paths"]
    assert "post" in paths["/infer"] and "post" in paths["/v2/models/{name}/infer"]
    for path in ("/attestation", "/models", "/receipts/batch", "/metrics", "/v2", "/v2/health/ready"):
        assert path in paths
    infer_body = paths["/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert infer_body["$ref"] == "#/components/schemas/InferRequest"
    assert "InferRequest" in schema["components"]["schemas"]
    assert "V2InferRequest" in schema["components"]["schemas"]
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_request_id_is_echoed_or_generated(server: str) -> None:
    given = httpx.post(f"{server}/infer", json=IRIS, headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    fresh = httpx.post(f"{server}/infer", json=IRIS)
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    again = httpx.post(f"{server}/infer", json=IRIS)
    assert again.headers["x-request-id"] != fresh.headers["x-request-id"]
    hostile = httpx.get(f"{server}/models", headers={"X-Request-ID": "x y" * 100})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    refused = httpx.get(f"{server}/nope", headers={"X-Request-ID": "trace-43"})
    assert refused.headers["x-request-id"] == "trace-43"


def test_access_log_line_per_request(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [VERINFER, "serve", "--port", str(port), "--nsm", "sim", "--pki-dir", str(tmp_path / "pki")],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            httpx.post(f"{url}/infer", json=IRIS, headers={"X-Request-ID": "log-me-1"})
            httpx.get(f"{url}/nope", headers={"X-Request-ID": "log-me-2"})
            time.sleep(0.3)
        finally:
            stop(process)
    text = log.read_text()
    assert re.search(r"\dZ log-me-1 POST /infer 200 [0-9.]+ms\n", text), text
    assert re.search(r"\dZ log-me-2 GET /nope 404 [0-9.]+ms\n", text), text


# --- receipt batches: only for the relay, rate-limited ----------------------------------------------------


def test_batches_need_the_relay_token(server: str) -> None:
    anonymous = httpx.post(f"{server}/receipts/batch", json={"from": 0, "max": 10})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{server}/receipts/batch", json={"from": 0}, headers=bearer("not-the-token"))
    assert wrong.status_code == 401
    assert httpx.post(f"{server}/receipts/batch", json={}, headers=bearer(BATCH_TOKEN)).status_code == 200


def test_batches_are_disabled_without_a_configured_token(own_server) -> None:
    url, _ = own_server
    response = httpx.post(f"{url}/receipts/batch", json={"from": 0}, headers=bearer(BATCH_TOKEN))
    assert response.status_code == 403 and response.json()["code"] == "batches_disabled"


def test_batches_are_rate_limited(tmp_path: Path) -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--nsm", "sim", "--pki-dir", str(tmp_path)]
    process = subprocess.Popen(
        [VERINFER, *args, *batch_token_args("tok", rate_per_s=1.0)], stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        codes = [
            httpx.post(f"{url}/receipts/batch", json={}, headers=bearer("tok")).status_code for _ in range(15)
        ]
        assert codes[:10] == [200] * 10  # the burst
        assert 429 in codes[10:]
        limited = httpx.post(f"{url}/receipts/batch", json={}, headers=bearer("tok"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    finally:
        stop(process)


def test_batch_access_refills_over_time() -> None:
    now = [0.0]
    access = BatchAccess(bytes(32), rate_per_s=1.0, burst=1, clock=lambda: now[0])
    with pytest.raises(Exception, match="bearer"):
        access.check("Bearer wrong")
    import hashlib

    token_access = BatchAccess(hashlib.sha256(b"t").digest(), rate_per_s=1.0, burst=1, clock=lambda: now[0])
    token_access.check("Bearer t")
    with pytest.raises(Exception, match="per second"):
        token_access.check("Bearer t")
    now[0] = 1.0
    token_access.check("bearer t")


def test_the_token_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    access = BatchAccess(bytes(32))
    with pytest.raises(Exception):  # noqa: B017
        access.check("Bearer super-secret-token")
    assert "super-secret-token" not in caplog.text
