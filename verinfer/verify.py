"""Offline verification of an inference, as a skeptic runs it: nothing is taken from the server on trust.

Given the response (with its receipt), the request that produced it, the attestation document and the
model manifest, check that:
  1. the attestation document chains to the pinned root and satisfies the PCR policy;
  2. the public key it binds is the receipt's enclave address;
  3. the receipt's EIP-712 signature recovers to that address;
  4. outputHash recomputes from the returned tensors, inputHash from the request's tensors;
  5. the manifest's digest is the attested user_data, and the receipt's modelHash is the named model's sha256.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attestation import AttestationError, Policy, decode, verify
from attestation.encoding import read_document_bytes
from protocol.addresses import address_of, checksum_address
from protocol.errors import RequestError
from protocol.hashing import keccak256
from protocol.inputs import parse_inputs
from protocol.manifest import Manifest, parse_manifest
from protocol.receipts import ReceiptError, SignedReceipt, recover_signer
from protocol.tensors import BY_V2, encode_tensors

Status = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class VerificationReport:
    checks: list[Check] = field(default_factory=list)
    simulated: bool = False
    receipt: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "simulated": self.simulated,
            "receipt": self.receipt,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
        }


def load_attestation(raw: bytes) -> bytes:
    """A document from a file: the JSON /attestation answer, or raw / hex / base64 COSE bytes."""
    stripped = raw.strip()
    if stripped.startswith(b"{"):
        try:
            return base64.b64decode(json.loads(stripped)["document"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"attestation JSON has no base64 'document': {exc}") from exc
    return read_document_bytes(raw)


def receipt_of(response: Any) -> Any:
    """The receipt of an /infer response, a V2 response (parameters.receipt), or a bare receipt."""
    if isinstance(response, dict):
        if "receipt" in response:
            return response["receipt"]
        parameters = response.get("parameters")
        if isinstance(parameters, dict) and "receipt" in parameters:
            return parameters["receipt"]
        if "signature" in response:
            return response
    raise ReceiptError("no receipt found in the response")


def output_hash(outputs: Any) -> bytes:
    """outputHash recomputed from response tensors ({name, datatype, shape, data}), in response order."""
    if not isinstance(outputs, list):
        raise ValueError("outputs must be a list of tensors")
    tensors = []
    for item in outputs:
        dtype = BY_V2.get(str(item.get("datatype"))) if isinstance(item, dict) else None
        if dtype is None:
            raise ValueError(f"output tensor without a known datatype: {item!r:.80}")
        array = np.asarray(item["data"], dtype=dtype.numpy).reshape(item["shape"])
        tensors.append((item["name"], array))
    return keccak256(encode_tensors(tensors))


def _model_name(response: Any) -> str | None:
    if isinstance(response, dict):
        name = response.get("model") or response.get("model_name")
        return name if isinstance(name, str) else None
    return None


def verify_inference(
    response: Any,
    attestation: bytes,
    *,
    policy: Policy,
    at: datetime | None = None,
    request: Any = None,
    manifest: Manifest | None = None,
) -> VerificationReport:
    report = VerificationReport(simulated=not policy.root.is_aws)
    try:
        signed = SignedReceipt.from_json(receipt_of(response))
    except ReceiptError as exc:
        report.add("receipt", "fail", str(exc))
        return report
    report.receipt = signed.to_json()
    receipt = signed.receipt
    report.add("receipt", "pass", f"request {report.receipt['requestId']} at {receipt.timestamp_ms} ms")

    try:
        attested = verify(attestation, policy, at)
        root = "SIMULATOR root (not hardware)" if attested.simulated else policy.root.label
        report.add("attestation", "pass", f"chains to {root}; module {attested.module_id}")
        public_key, user_data = attested.public_key, attested.user_data
    except AttestationError as exc:
        report.add("attestation", "fail", f"{exc.code}: {exc.detail}")
        try:
            doc = decode(attestation).document
            public_key, user_data = doc.public_key, doc.user_data
        except AttestationError:
            public_key = user_data = None

    if public_key is None or len(public_key) != 64:
        report.add("enclave_key", "fail", "the attestation does not bind a 64-byte secp256k1 public key")
    elif address_of(public_key) != signed.enclave:
        report.add(
            "enclave_key",
            "fail",
            f"attested key is {checksum_address(address_of(public_key))}, receipt names "
            f"{checksum_address(signed.enclave)}",
        )
    else:
        report.add("enclave_key", "pass", f"attested key is enclave {checksum_address(signed.enclave)}")

    try:
        signer = recover_signer(receipt, signed.signature)
        if signer == signed.enclave:
            report.add("signature", "pass", "EIP-712 signature recovers to the enclave")
        else:
            report.add(
                "signature", "fail", f"signature recovers to {checksum_address(signer)}, not the enclave"
            )
    except ReceiptError as exc:
        report.add("signature", "fail", str(exc))

    try:
        recomputed = output_hash(response.get("outputs"))
        status: Status = "pass" if recomputed == receipt.output_hash else "fail"
        report.add("output_hash", status, f"keccak256 of the returned outputs is 0x{recomputed.hex()}")
    except (ValueError, TypeError, KeyError) as exc:
        report.add("output_hash", "fail", f"cannot recompute: {exc}")

    name = _model_name(response)
    if name is None and isinstance(request, dict) and isinstance(request.get("model"), str):
        name = request["model"]
    entry = manifest.models.get(name) if manifest is not None and name is not None else None
    _check_inputs(report, request, entry, receipt.input_hash)
    _check_manifest(
        report, manifest=manifest, entry=entry, name=name, user_data=user_data, model_hash=receipt.model_hash
    )
    return report


def _check_inputs(report: VerificationReport, request: Any, entry: Any, expected: bytes) -> None:
    if request is None:
        report.add("input_hash", "skipped", "no request given: inputs not checked")
        return
    if entry is None:
        report.add("input_hash", "fail", "the model is not in the manifest, so its inputs cannot be encoded")
        return
    try:
        inputs = parse_inputs(entry, request.get("inputs") if isinstance(request, dict) else None)
    except RequestError as exc:
        report.add("input_hash", "fail", f"request inputs do not parse: {exc.message}")
        return
    recomputed = keccak256(encode_tensors(inputs))
    report.add(
        "input_hash",
        "pass" if recomputed == expected else "fail",
        f"keccak256 of the request's inputs is 0x{recomputed.hex()}",
    )


def _check_manifest(
    report: VerificationReport,
    *,
    manifest: Manifest | None,
    entry: Any,
    name: str | None,
    user_data: bytes | None,
    model_hash: bytes,
) -> None:
    if manifest is None:
        report.add("manifest", "skipped", "no manifest given: model hash not tied to the attested model set")
        return
    if user_data != manifest.digest:
        report.add("manifest", "fail", "the manifest's digest is not the attested user_data")
        return
    if entry is None:
        report.add("manifest", "fail", f"model {name!r} is not in the attested manifest")
        return
    if entry.model_hash != model_hash:
        report.add(
            "manifest", "fail", f"modelHash is not the sha256 of {entry.name} in the attested manifest"
        )
        return
    report.add(
        "manifest", "pass", f"{entry.name} v{entry.version} (sha256 {entry.sha256[:16]}...) is attested"
    )


def manifest_from_json(data: Any) -> Manifest:
    """A manifest as served by GET /models or read from models/manifest.json (no ONNX files needed)."""
    return parse_manifest(data, Path("."))
