"""Every endpoint of the real server, and receipts that verify by two independent paths."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from attestation import Policy, TrustedRoot, decode, verify
from protocol.addresses import address_of, checksum_address
from protocol.manifest import load_manifest
from protocol.receipts import SignedReceipt
from verinfer.verify import manifest_from_json, verify_inference

from .test_receipts import typed_data

MODELS = Path(__file__).resolve().parent.parent / "models"
EVAL = np.load(MODELS / "data" / "mnist-eval.npz")
REQUESTS = {
    "iris-ols": {"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4], [6.7, 3.0, 5.2]]},
    "iris-mlp": {"model": "iris-mlp", "inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
    "mnist-lenet": {"model": "mnist-lenet", "inputs": (EVAL["x"][:4, None] / 255.0).tolist()},
}


def root_of(server_pki: Path) -> TrustedRoot:
    return TrustedRoot.from_file(server_pki / "root.pem")


def attestation_document(server: str, nonce: str = "") -> bytes:
    response = httpx.get(f"{server}/attestation", params={"nonce": nonce} if nonce else None)
    assert response.status_code == 200
    return base64.b64decode(response.json()["document"])


@pytest.mark.parametrize("name", list(REQUESTS))
def test_infer_and_verify_every_model(server: str, server_pki: Path, name: str) -> None:
    request = REQUESTS[name]
    response = httpx.post(f"{server}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name and body["simulated"] is True
    document = attestation_document(server, "c0ffee")
    manifest = manifest_from_json(httpx.get(f"{server}/models").json())
    report = verify_inference(
        body, document, policy=Policy(root=root_of(server_pki)), request=request, manifest=manifest
    )
    assert report.ok, report.to_json()
    assert [c.status for c in report.checks] == ["pass"] * 7


def test_outputs_are_right(server: str) -> None:
    mlp = httpx.post(f"{server}/infer", json=REQUESTS["iris-mlp"]).json()
    labels = next(o for o in mlp["outputs"] if o["name"] == "label")
    assert labels == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}
    ols = httpx.post(f"{server}/infer", json=REQUESTS["iris-ols"]).json()["outputs"][0]
    session = onnxruntime.InferenceSession(str(MODELS / "iris-ols.onnx"))
    expected = session.run(None, {"features": np.array(REQUESTS["iris-ols"]["inputs"], dtype=np.float32)})[0]
    assert ols["shape"] == [2, 1]
    assert np.array(ols["data"], dtype=np.float32).tobytes() == expected.ravel().tobytes()
    lenet = httpx.post(f"{server}/infer", json=REQUESTS["mnist-lenet"]).json()
    digits = next(o for o in lenet["outputs"] if o["name"] == "digit")["data"]
    assert digits == EVAL["y"][:4].tolist()


def test_receipt_recovers_with_eth_account(server: str) -> None:
    body = httpx.post(f"{server}/infer", json={**REQUESTS["iris-mlp"], "request_id": "0x" + "ab" * 32}).json()
    signed = SignedReceipt.from_json(body["receipt"])
    assert signed.receipt.request_id == b"\xab" * 32
    recovered = Account.recover_message(
        encode_typed_data(full_message=typed_data(signed.receipt)), signature=signed.signature
    )
    assert recovered == body["receipt"]["enclave"]


def test_attestation_binds_key_manifest_and_nonce(server: str, server_pki: Path) -> None:
    response = httpx.get(f"{server}/attestation", params={"nonce": "0x0102"})
    body = response.json()
    assert response.headers["x-verinfer-simulated"] == "true"
    assert body["simulated"] is True and "SIMULATED" in body["warning"]
    document = base64.b64decode(body["document"])
    result = verify(document, Policy(root=root_of(server_pki), expected_nonce=b"\x01\x02", max_age_s=30))
    assert result.public_key is not None
    assert checksum_address(address_of(result.public_key)) == body["enclave"]
    # user_data = manifest digest || the X25519 key requests are sealed to (protocol/binding.py)
    assert result.user_data is not None
    assert result.user_data[:32] == load_manifest(MODELS).digest == bytes.fromhex(body["manifestDigest"][2:])
    assert result.user_data[32:] == bytes.fromhex(body["encryptionKey"][2:])
    assert body["summary"]["nonce"] == "0102"
    with pytest.raises(Exception, match="root_not_trusted"):
        verify(document, Policy())


def test_attestation_as_cbor(server: str, server_pki: Path) -> None:
    response = httpx.get(f"{server}/attestation?nonce=ff", headers={"Accept": "application/cbor"})
    assert response.headers["content-type"] == "application/cbor"
    assert verify(response.content, Policy(root=root_of(server_pki), expected_nonce=b"\xff")).simulated


def test_every_attestation_uses_the_same_key(server: str) -> None:
    keys = {decode(attestation_document(server, n)).document.public_key for n in ("01", "02")}
    assert len(keys) == 1


def test_simulated_pcrs_are_the_image_measurement(server: str, server_pki: Path) -> None:
    from enclave.image import measure_image

    measurement = measure_image(MODELS)
    verify(attestation_document(server), Policy(root=root_of(server_pki), expected_pcrs=measurement.pcrs))


def test_models_endpoint(server: str) -> None:
    body = httpx.get(f"{server}/models").json()
    manifest = load_manifest(MODELS)
    assert body["digest"] == "0x" + manifest.digest.hex()
    assert {m["name"]: m["sha256"] for m in body["models"]} == {
        n: m.sha256 for n, m in manifest.models.items()
    }


def test_v2_server_and_health(server: str) -> None:
    assert httpx.get(f"{server}/v2").json()["name"] == "verinfer"
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}


def test_v2_model_metadata(server: str) -> None:
    body = httpx.get(f"{server}/v2/models/mnist-lenet").json()
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in body["outputs"]] == ["logits", "digit"]
    assert httpx.get(f"{server}/v2/models/mnist-lenet/ready").json() == {"name": "mnist-lenet", "ready": True}
    missing = httpx.get(f"{server}/v2/models/nope/ready")
    assert missing.status_code == 404 and "error" in missing.json()


def test_v2_infer(server: str, server_pki: Path) -> None:
    request = {
        "id": "req-1",
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
        "parameters": {"request_id": "0x" + "11" * 32},
    }
    response = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == "iris-mlp"
    assert body["parameters"]["receipt"]["requestId"] == "0x" + "11" * 32
    manifest = manifest_from_json(httpx.get(f"{server}/models").json())
    report = verify_inference(
        body,
        attestation_document(server),
        policy=Policy(root=root_of(server_pki)),
        request={"model": "iris-mlp", **request},
        manifest=manifest,
    )
    assert report.ok, report.to_json()


def test_v2_output_selection_is_what_the_receipt_covers(server: str, server_pki: Path) -> None:
    request = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}],
        "outputs": [{"name": "label"}],
    }
    body = httpx.post(f"{server}/v2/models/iris-mlp/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["label"]
    report = verify_inference(body, attestation_document(server), policy=Policy(root=root_of(server_pki)))
    assert {c.name: c.status for c in report.checks}["output_hash"] == "pass"


def test_metrics(server: str) -> None:
    httpx.post(f"{server}/infer", json=REQUESTS["iris-ols"])
    httpx.post(f"{server}/infer", json={"model": "nope", "inputs": [[1]]})
    text = httpx.get(f"{server}/metrics").text
    assert 'verinfer_inferences_total{model="iris-ols"}' in text
    assert 'verinfer_inference_seconds_bucket{le="0.001",model="iris-ols"}' in text
    assert 'verinfer_errors_total{code="unknown_model"}' in text
    assert 'verinfer_requests_total{endpoint="infer",status="404"}' in text
    assert 'simulated="true"' in text


def test_response_is_compact_json(server: str) -> None:
    raw = httpx.post(f"{server}/infer", json=REQUESTS["iris-mlp"]).content
    assert json.loads(raw)["receipt"]["signature"].startswith("0x")
