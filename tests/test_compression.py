"""gzip/deflate request and response bodies at the HTTP edge (protocol/compression.py, protocol/edge.py)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from hypothesis import given
from hypothesis import strategies as st

from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.service import EnclaveService
from protocol.compression import accepted_encoding, decode_body, encode_body
from protocol.edge import HttpEdge
from protocol.errors import RequestError
from protocol.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent
TOO_LARGE = RequestError(413, "body_too_large", "too large")
IRIS = {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]] * 20}


@given(st.binary(max_size=4096), st.sampled_from(["gzip", "deflate"]))
def test_round_trip(data: bytes, encoding: str) -> None:
    assert decode_body(encoding, encode_body(encoding, data), 4096, TOO_LARGE) == data


@given(st.binary(max_size=2048))
def test_reads_what_the_standard_library_writes(data: bytes) -> None:
    assert decode_body("gzip", gzip.compress(data), 2048, TOO_LARGE) == data
    assert decode_body("deflate", zlib.compress(data), 2048, TOO_LARGE) == data
    assert decode_body("identity", data, 2048, TOO_LARGE) == data


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB in about 64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(RequestError) as caught:
        decode_body("gzip", bomb, 1024 * 1024, TOO_LARGE)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("encoding", "body", "status"),
    [
        ("gzip", b"not gzip at all", 400),
        ("deflate", zlib.compress(b"{}")[:-3], 400),  # truncated
        ("gzip", gzip.compress(b"{}") + b"trailing", 400),
        ("br", b"x", 415),
        ("gzip, deflate", b"x", 415),  # stacked codings are not accepted
    ],
)
def test_bad_codings_are_refused(encoding: str, body: bytes, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        decode_body(encoding, body, 1024, TOO_LARGE)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (b"gzip", "gzip"),
        (b"deflate", "deflate"),
        (b"deflate, gzip;q=0.5", "gzip"),
        (b"gzip;q=0, deflate", "deflate"),
        (b"br, identity", None),
        (b"gzip;q=bogus", None),
    ],
)
def test_accept_encoding(accept: bytes, chosen: str | None) -> None:
    assert accepted_encoding(accept) == chosen


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> EnclaveService:
    nsm = open_nsm("sim", pki_dir=tmp_path_factory.mktemp("compression-pki"))
    return EnclaveService(load_manifest(REPO / "models"), nsm)


def exchange(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://enclave") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_requests_and_answers(
    service: EnclaveService, fast_path: bool, encoding: str, compress: Any
) -> None:
    app = create_app(service, fast_path=fast_path)
    headers = {"content-encoding": encoding, "accept-encoding": encoding, "content-type": "application/json"}
    response = exchange(app, "POST", "/infer", content=compress(orjson.dumps(IRIS)), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == encoding  # httpx inflated it for .json()
    assert len(response.json()["outputs"][1]["data"]) == 20
    plain = exchange(app, "POST", "/infer", json=IRIS, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.status_code == 200


def test_a_bomb_over_http_is_413_and_the_server_answers_on(service: EnclaveService) -> None:
    app = create_app(service, max_body=64 * 1024)
    bomb = gzip.compress(b" " * (16 * 1024 * 1024))
    refused = exchange(app, "POST", "/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert refused.status_code == 413 and refused.json()["code"] == "body_too_large"
    unknown = exchange(
        app, "POST", "/v2/models/iris-mlp/infer", content=b"{}", headers={"content-encoding": "br"}
    )
    assert unknown.status_code == 415 and unknown.json()["code"] == "unsupported_content_encoding"
    assert "gzip" in unknown.headers["accept-encoding"]
    assert exchange(app, "POST", "/infer", json=IRIS).status_code == 200


def test_small_answers_and_streams_are_sent_as_they_are() -> None:
    api = FastAPI()

    @api.get("/small")
    async def small() -> dict[str, str]:
        return {"ok": "yes"}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for index in range(3):
                yield b"data: " + b"x" * 400 + b"%d\n\n" % index

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.get("/big")
    async def big() -> dict[str, str]:
        return {"text": "y" * 4000}

    edge = HttpEdge(api, max_body=1024)
    accept = {"accept-encoding": "gzip"}
    assert "content-encoding" not in exchange(edge, "GET", "/small", headers=accept).headers
    streamed = exchange(edge, "GET", "/stream", headers=accept)
    assert "content-encoding" not in streamed.headers and streamed.text.count("data: ") == 3
    compressed = exchange(edge, "GET", "/big", headers=accept)
    assert compressed.headers["content-encoding"] == "gzip" and compressed.json()["text"] == "y" * 4000
    assert int(compressed.headers["content-length"]) < 200
