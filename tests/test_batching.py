"""Dynamic batching (enclave/batcher.py): concurrent requests share one model run, receipts per request."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.batcher import Batcher, BatchPolicy, batchable, batching_is_exact
from enclave.runtime import LoadedModel
from enclave.service import EnclaveService
from protocol.hashing import keccak256
from protocol.manifest import TensorSpec, load_manifest
from protocol.receipts import SignedReceipt, recover_signer
from protocol.tensors import encode_tensors

REPO = Path(__file__).resolve().parent.parent
MNIST = np.load(REPO / "models" / "data" / "mnist-eval.npz")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> EnclaveService:
    nsm = open_nsm("sim", pki_dir=tmp_path_factory.mktemp("batching-pki"))
    return EnclaveService(load_manifest(REPO / "models"), nsm)


def iris(row: int) -> dict[str, Any]:
    rng = np.random.default_rng(row)
    return {"model": "iris-mlp", "inputs": rng.uniform(0, 8, (1, 4)).round(3).tolist()}


def digit(index: int) -> dict[str, Any]:
    return {"model": "mnist-lenet", "inputs": (MNIST["x"][index : index + 1, None] / 255.0).round(4).tolist()}


async def post_all(app: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """All bodies at once, so they reach the event loop in the same turn."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://enclave") as client:
        return await asyncio.gather(*(client.post("/infer", json=body) for body in bodies))


def counting_app(service: EnclaveService, policy: BatchPolicy | None) -> tuple[Any, list[tuple[str, int]]]:
    app = create_app(service, batching=policy)
    endpoints = app.app.state.endpoints  # type: ignore[attr-defined]
    batches: list[tuple[str, int]] = []
    if endpoints.batcher is not None:
        endpoints.batcher.on_batch = lambda model, size, _s: batches.append((model.entry.name, size))
    return app, batches


def test_every_shipped_model_batches_exactly(service: EnclaveService) -> None:
    for name, model in service.runtime.models.items():
        assert batching_is_exact(model), name


def test_a_fixed_first_dimension_is_never_stacked(service: EnclaveService) -> None:
    model = service.runtime.models["iris-mlp"]
    fixed = replace(model.entry, inputs=(TensorSpec("features", model.entry.inputs[0].dtype, (1, 4)),))
    pinned = LoadedModel(fixed, model.session, model.output_names, model.output_specs)
    assert not batchable(pinned) and not batching_is_exact(pinned)
    batcher = Batcher(service)
    batcher.exact["iris-mlp"] = False
    assert batcher.batch_limit("iris-mlp") == 1 and batcher.batch_limit("mnist-lenet") == 32


def test_concurrent_requests_share_a_run_and_answer_as_if_alone(service: EnclaveService) -> None:
    bodies = [iris(i) for i in range(12)] + [digit(i) for i in range(12)]
    app, batches = counting_app(service, BatchPolicy(max_batch=32))
    batched = asyncio.run(post_all(app, bodies))
    alone_app, _ = counting_app(service, None)
    alone = [asyncio.run(post_all(alone_app, [body]))[0] for body in bodies]

    assert sorted(batches) == [("iris-mlp", 12), ("mnist-lenet", 12)]
    for body, response, reference in zip(bodies, batched, alone, strict=True):
        assert response.status_code == 200, response.text
        answer, expected = response.json(), reference.json()
        assert answer["outputs"] == expected["outputs"]  # bit for bit: JSON floats round-trip exactly
        signed = SignedReceipt.from_json(answer["receipt"])
        assert recover_signer(signed.receipt, signed.signature) == service.key.address
        inputs = [
            ("features" if body["model"] == "iris-mlp" else "image", np.asarray(body["inputs"], np.float32))
        ]
        assert signed.receipt.input_hash == keccak256(encode_tensors(inputs))
        assert signed.receipt == replace(
            SignedReceipt.from_json(expected["receipt"]).receipt,
            request_id=signed.receipt.request_id,
            timestamp_ms=signed.receipt.timestamp_ms,
        )


def test_max_batch_splits_a_crowd(service: EnclaveService) -> None:
    app, batches = counting_app(service, BatchPolicy(max_batch=4))
    responses = asyncio.run(post_all(app, [iris(i) for i in range(10)]))
    assert all(r.status_code == 200 for r in responses)
    assert sum(size for _, size in batches) == 10 and max(size for _, size in batches) <= 4


def test_a_window_waits_for_company(service: EnclaveService) -> None:
    async def staggered(app: Any) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://enclave") as client:
            first = asyncio.ensure_future(client.post("/infer", json=iris(0)))
            await asyncio.sleep(0.02)  # later than one loop turn, well inside the window
            return [*(await asyncio.gather(first, client.post("/infer", json=iris(1))))]

    app, batches = counting_app(service, BatchPolicy(max_batch=8, window_s=0.5))
    responses = asyncio.run(staggered(app))
    assert [r.status_code for r in responses] == [200, 200]
    assert batches == [("iris-mlp", 2)]


def test_one_bad_request_fails_alone(service: EnclaveService) -> None:
    """An input that overflows the MLP to NaN is refused with 422 and unsigned; its batch-mates succeed."""
    overflow = {"model": "iris-mlp", "inputs": [[1e38, 1e38, 1e38, 3e38]]}
    app, batches = counting_app(service, BatchPolicy())
    before = service.receipt_log_start + len(service.receipt_log)
    responses = asyncio.run(post_all(app, [iris(1), overflow, iris(2)]))
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert responses[1].json()["code"] == "non_finite_output"
    assert batches == [("iris-mlp", 3)]
    logged = [
        r.to_json()["requestId"] for r in list(service.receipt_log)[before - service.receipt_log_start :]
    ]
    assert logged == [
        responses[0].json()["receipt"]["requestId"],
        responses[2].json()["receipt"]["requestId"],
    ]


def test_v2_requests_batch_with_infer_requests(service: EnclaveService) -> None:
    async def mixed(app: Any) -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        v2 = {
            "inputs": [
                {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}
            ]
        }
        async with httpx.AsyncClient(transport=transport, base_url="http://enclave") as client:
            return await asyncio.gather(
                client.post("/v2/models/iris-mlp/infer", json=v2),
                client.post("/infer", json={"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}),
            )

    app, batches = counting_app(service, BatchPolicy())
    v2_answer, answer = asyncio.run(mixed(app))
    assert v2_answer.status_code == 200 and answer.status_code == 200
    assert batches == [("iris-mlp", 2)]
    v2_hash = v2_answer.json()["parameters"]["receipt"]["outputHash"]
    assert v2_hash == answer.json()["receipt"]["outputHash"]
