"""`verinfer seal` / `verinfer unseal` and the enclave's POST /infer/sealed, against a real server.

The seal command must verify the attestation and its key binding before sealing anything; the enclave opens
only what was sealed to its attested key for the model named, and seals the output to the requester's key.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from attestation.sim_pki import SimulatorPki
from protocol.hashing import keccak256
from protocol.manifest import load_manifest
from verinfer.processes import VERINFER

MODELS = Path(__file__).resolve().parents[1] / "models"
FEATURES = [[6.7, 3.0, 5.2, 2.3]]


def verinfer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VERINFER, *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture
def evidence(server: str, tmp_path: Path) -> Path:
    """attestation.json, manifest.json and request.json of the live server, in tmp_path."""
    (tmp_path / "attestation.json").write_bytes(httpx.get(server + "/attestation").content)
    (tmp_path / "manifest.json").write_bytes(httpx.get(server + "/models").content)
    (tmp_path / "request.json").write_bytes(orjson.dumps({"model": "iris-mlp", "inputs": FEATURES}))
    return tmp_path


def seal(evidence: Path, server_pki: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return verinfer(
        "seal",
        "--attestation",
        evidence / "attestation.json",
        "--manifest",
        evidence / "manifest.json",
        "--model",
        "iris-mlp",
        "--input",
        evidence / "request.json",
        "--root",
        server_pki / "root.pem",
        *extra,
    )


def test_seal_refuses_an_unpinned_image(evidence: Path, server_pki: Path) -> None:
    result = seal(evidence, server_pki)
    assert result.returncode == 1 and "NOT SEALED" in result.stdout and "sealedInput" not in result.stdout


def test_seal_refuses_a_document_that_binds_no_encryption_key(
    evidence: Path, sim_pki: SimulatorPki, tmp_path: Path
) -> None:
    digest = load_manifest(MODELS).digest  # the old 32-byte user_data: the manifest digest alone
    document = tmp_path / "old.cbor"
    made = verinfer(
        "attest", "simulate", "--pki-dir", sim_pki.directory, "--user-data", digest.hex(),
        "--public-key", "04" * 64, "-o", document,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = verinfer(
        "seal", "--attestation", document, "--manifest", evidence / "manifest.json", "--model", "iris-mlp",
        "--input", evidence / "request.json", "--root", sim_pki.directory / "root.pem", "--allow-any-image",
        "--allow-debug",
    )  # fmt: skip
    assert result.returncode == 1 and "binds no encryption key" in result.stdout


def test_seal_refuses_a_manifest_the_attestation_does_not_bind(evidence: Path, server_pki: Path) -> None:
    manifest = json.loads((evidence / "manifest.json").read_text())
    manifest["models"][0]["version"] = "2"
    (evidence / "manifest.json").write_text(json.dumps(manifest))
    result = seal(evidence, server_pki, "--allow-any-image")
    assert result.returncode == 1 and "manifest is not the one the attestation binds" in result.stdout


def test_sealed_input_and_output_round_trip(
    server: str, evidence: Path, server_pki: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "requester.key"
    made = verinfer("unseal", "--keygen", key_file)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    output_key = json.loads(made.stdout)["outputKey"]

    sealed = seal(evidence, server_pki, "--allow-any-image")
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    sealed_input = json.loads(sealed.stdout)["sealedInput"]
    assert (
        json.loads(sealed.stdout)["encryptionKey"]
        == httpx.get(server + "/attestation").json()["encryptionKey"]
    )

    request_id = "0x" + "11" * 32
    body = {
        "model": "iris-mlp",
        "sealed_input": sealed_input,
        "request_id": request_id,
        "output_key": output_key,
    }
    answer = httpx.post(server + "/infer/sealed", json=body)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["sealed_output"] is True
    receipt = reply["receipt"]
    assert receipt["requestId"] == request_id
    assert receipt["inputHash"] == "0x" + keccak256(bytes.fromhex(sealed_input[2:])).hex()
    assert receipt["outputHash"] == "0x" + keccak256(bytes.fromhex(reply["output"][2:])).hex()

    opened = verinfer("unseal", reply["output"], "--key", key_file, "--sealed-input", sealed_input)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    clear = httpx.post(server + "/infer", json={"model": "iris-mlp", "inputs": FEATURES}).json()
    assert json.loads(opened.stdout)["outputs"] == clear["outputs"]

    other = tmp_path / "other.key"
    verinfer("unseal", "--keygen", other)
    refused = verinfer("unseal", reply["output"], "--key", other, "--sealed-input", sealed_input)
    assert refused.returncode == 1 and "NOT OPENED" in refused.stdout


def test_infer_sealed_refuses_what_it_cannot_open(server: str, evidence: Path, server_pki: Path) -> None:
    sealed = seal(evidence, server_pki, "--allow-any-image")
    sealed_input = bytes.fromhex(json.loads(sealed.stdout)["sealedInput"][2:])
    tampered = bytearray(sealed_input)
    tampered[-1] ^= 1
    for model, data in (
        ("iris-mlp", bytes(tampered)),
        ("iris-ols", sealed_input),
    ):  # the info binds the model
        answer = httpx.post(
            server + "/infer/sealed", json={"model": model, "sealed_input": "0x" + data.hex()}
        )
        assert answer.status_code == 400 and answer.json()["code"] == "sealed_input_rejected", answer.text
    clear = httpx.post(
        server + "/infer/sealed", json={"model": "iris-mlp", "sealed_input": "0x" + sealed_input.hex()}
    )
    assert clear.status_code == 200 and clear.json()["sealed_output"] is False
    bad = httpx.post(server + "/infer/sealed", json={"model": "iris-mlp", "sealed_input": "nothex", "x": 1})
    assert bad.status_code == 400
    assert httpx.get(server + "/v2/health/ready").status_code == 200


def test_verify_checks_that_the_offered_key_is_the_attested_one(
    server: str, evidence: Path, server_pki: Path
) -> None:
    response = evidence / "response.json"
    response.write_bytes(
        httpx.post(server + "/infer", json={"model": "iris-mlp", "inputs": FEATURES}).content
    )
    args: list[str | Path] = [
        "verify", response, "--attestation", evidence / "attestation.json", "--manifest",
        evidence / "manifest.json", "--request", evidence / "request.json", "--root", server_pki / "root.pem",
        "--allow-any-image", "--json",
    ]  # fmt: skip
    checks = {c["name"]: c["status"] for c in json.loads(verinfer(*args).stdout)["checks"]}
    assert checks["encryption_key"] == "pass"

    attestation = json.loads((evidence / "attestation.json").read_text())
    keys = bytearray(base64.b64decode(attestation["ohttpKeys"]))
    keys[5] ^= 0x01  # a byte of the public key: a key configuration the document does not bind
    attestation["ohttpKeys"] = base64.b64encode(bytes(keys)).decode()
    (evidence / "attestation.json").write_text(json.dumps(attestation))
    result = verinfer(*args)
    checks = {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and checks["encryption_key"] == "fail"
