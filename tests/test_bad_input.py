"""Bad input gets a clear 4xx {code, message}, never a 500, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MAX_BODY

GOOD = {"model": "iris-mlp", "inputs": [[5.1, 3.5, 1.4, 0.2]]}

CASES = [
    ("unknown model", {"model": "gpt-9", "inputs": [[1]]}, 404, "unknown_model"),
    ("model not a string", {"model": 7, "inputs": [[1]]}, 400, "missing_field"),
    ("missing model", {"inputs": [[1, 2, 3, 4]]}, 400, "missing_field"),
    ("missing inputs", {"model": "iris-mlp"}, 400, "missing_field"),
    ("wrong width", {"model": "iris-mlp", "inputs": [[1, 2, 3]]}, 400, "invalid_shape"),
    ("wrong rank", {"model": "iris-mlp", "inputs": [1, 2, 3, 4]}, 400, "invalid_shape"),
    ("empty batch", {"model": "iris-mlp", "inputs": []}, 400, "invalid_shape"),
    ("image without channel", {"model": "mnist-lenet", "inputs": [[[0.0] * 28] * 28]}, 400, "invalid_shape"),
    ("ragged", {"model": "iris-mlp", "inputs": [[1, 2, 3, 4], [1, 2]]}, 400, "invalid_tensor"),
    ("strings", {"model": "iris-mlp", "inputs": [["1", "2", "3", "4"]]}, 400, "invalid_dtype"),
    ("booleans", {"model": "iris-mlp", "inputs": [[True, False, True, False]]}, 400, "invalid_dtype"),
    ("nulls", {"model": "iris-mlp", "inputs": [[None, 1, 2, 3]]}, 400, "invalid_dtype"),
    ("beyond float32", {"model": "iris-mlp", "inputs": [[1e39, 1, 2, 3]]}, 400, "invalid_value"),
    (
        "unknown tensor name",
        {"model": "iris-mlp", "inputs": [{"name": "x", "data": [[1, 2, 3, 4]]}]},
        400,
        "unknown_input",
    ),
    ("tensor without data", {"model": "iris-mlp", "inputs": [{"name": "features"}]}, 400, "missing_field"),
    (
        "wrong datatype",
        {"model": "iris-mlp", "inputs": [{"name": "features", "datatype": "INT64", "data": [[1, 2, 3, 4]]}]},
        400,
        "invalid_dtype",
    ),
    (
        "shape does not fit data",
        {"model": "iris-mlp", "inputs": [{"name": "features", "shape": [2, 4], "data": [1, 2, 3, 4]}]},
        400,
        "invalid_shape",
    ),
    (
        "negative shape",
        {"model": "iris-mlp", "inputs": [{"name": "features", "shape": [-1, 4], "data": [1, 2, 3, 4]}]},
        400,
        "invalid_shape",
    ),
    (
        "duplicate input",
        {"model": "iris-mlp", "inputs": [{"name": "features", "data": [[1, 2, 3, 4]]}] * 2},
        400,
        "duplicate_input",
    ),
    ("short request id", {**GOOD, "request_id": "0x1234"}, 400, "invalid_request_id"),
    ("request id not hex", {**GOOD, "request_id": "z" * 64}, 400, "invalid_request_id"),
    ("body is a list", [GOOD], 400, "invalid_json"),
]


def assert_still_serving(server: str) -> None:
    response = httpx.post(f"{server}/infer", json=GOOD)
    assert response.status_code == 200


@pytest.mark.parametrize(("label", "body", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_infer_bodies(server: str, label: str, body: object, status: int, code: str) -> None:
    response = httpx.post(f"{server}/infer", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert_still_serving(server)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"\xff\xfe", b"NaN", b'{"model": "iris-mlp", "inputs": [[NaN, 1, 2, 3]]}']
)
def test_malformed_json(server: str, raw: bytes) -> None:
    response = httpx.post(f"{server}/infer", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    assert_still_serving(server)


def test_body_over_the_limit(server: str) -> None:
    big = b'{"model": "iris-mlp", "inputs": [[' + b"1," * (MAX_BODY // 2) + b"1]]}"
    response = httpx.post(f"{server}/infer", content=big)
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert_still_serving(server)


def test_chunked_body_over_the_limit(server: str) -> None:
    def chunks():
        yield b'{"model": "iris-mlp", "inputs": [['
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"1," * 500
        yield b"1]]}"

    response = httpx.post(f"{server}/infer", content=chunks())
    assert response.status_code == 413
    assert_still_serving(server)


@pytest.mark.parametrize("nonce", ["xyz", "abc", "00" * 1025])
def test_malformed_nonce(server: str, nonce: str) -> None:
    response = httpx.get(f"{server}/attestation", params={"nonce": nonce})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_nonce"
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"inputs": [{"name": "features", "data": [5.1, 3.5, 1.4, 0.2]}]}, "missing_field"),
        ({"inputs": [[5.1, 3.5, 1.4, 0.2]]}, "missing_field"),
        ({}, "missing_field"),
        (
            {
                "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "nope"}],
            },
            "unknown_output",
        ),
        (
            {
                "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                "parameters": [],
            },
            "invalid_parameters",
        ),
    ],
)
def test_v2_errors_use_the_protocol_shape(server: str, body: dict, code: str) -> None:
    response = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == code and isinstance(error["error"], str)
    assert_still_serving(server)


def test_v2_unknown_model(server: str) -> None:
    response = httpx.post(f"{server}/v2/models/nope/infer", json={"inputs": []})
    assert response.status_code == 404 and response.json()["code"] == "unknown_model"


def test_no_500_was_ever_served(server: str) -> None:
    metrics = httpx.get(f"{server}/metrics").text
    assert 'status="500"' not in metrics
    assert 'code="internal"' not in metrics
