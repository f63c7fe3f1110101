"""The I/O-free half of verinfer.client: what a client trusts, the attested enclave, /infer bodies, and the
checks that turn a server's answer into outputs. Client and AsyncClient (client.py) only add the HTTP round
trips, so the sync and async clients cannot drift apart in what they verify; client_llm.py does the same
for the /v1 LLM API.

Every receipt check is verinfer.verify / verinfer.verify_llm (the offline verifier an auditor runs); this
module only decides which of their checks must pass and which error a failure is.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from attestation import AttestationError as DocumentError
from attestation import Policy, VerifiedAttestation, verify
from attestation.encoding import read_document_bytes
from protocol.addresses import address_of, checksum_address
from protocol.images import image_id
from protocol.manifest import Manifest, ManifestError
from protocol.tensors import tensors_from_json

from .client_errors import (
    AttestationError,
    ForgedReceiptError,
    KeyChanged,
    ReceiptError,
    StaleNonceError,
    UnknownSignerError,
)
from .verify import (
    VerificationReport,
    attested_manifest_digest,
    is_pinned,
    manifest_from_json,
    parse_image_id,
    verify_inference,
)

NONCE_BYTES = 32
# Checks that must each *pass* (not be skipped) before an answer is returned.
INFER_CHECKS = ("receipt", "attestation", "enclave_key", "signature", "output_hash", "input_hash", "model")
# A failure of one of these means the signed evidence does not match the answer: forged or tampered.
FORGERY_CHECKS = frozenset(("signature", "output_hash", "input_hash", "model", "request_id", "chain"))


# --- trust ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """What a client accepts: a root, pinned PCRs and/or image ids (any of them)."""

    policy: Policy
    image_ids: tuple[bytes, ...]
    allow_any_image: bool


def make_trust(policy: Policy | None, image_ids: Iterable[bytes | str], allow_any_image: bool) -> Trust:
    """Refuse an unpinned client: a valid chain only proves that *some* enclave signed, and anyone can
    run an enclave with their own code. PCR0, PCR1 and PCR2 together, or an image id, name the code."""
    policy = policy if policy is not None else Policy()
    ids = tuple(i if isinstance(i, bytes) else parse_image_id(i) for i in image_ids)
    if any(len(i) != 32 for i in ids):
        raise ValueError("an image id is 32 bytes: keccak256(PCR0 || PCR1 || PCR2)")
    if policy.expected_nonce is not None:
        raise ValueError("the client sends a fresh nonce on every attestation: leave expected_nonce unset")
    if not is_pinned(policy, ids) and not allow_any_image:
        raise ValueError(
            "no image is pinned: give Policy(expected_pcrs={0: .., 1: .., 2: ..}) or image_ids=[..] "
            "(`verinfer image measure --json`); allow_any_image=True accepts any enclave's code"
        )
    return Trust(policy, ids, allow_any_image)


@dataclass(frozen=True)
class Attested:
    """An enclave this client verified: a document with the client's fresh nonce, and its manifest."""

    document: bytes
    verified: VerifiedAttestation
    manifest: Manifest
    nonce: bytes
    at: datetime  # when it was verified: later receipts are checked as of this moment

    @property
    def address(self) -> bytes:
        assert self.verified.public_key is not None
        return address_of(self.verified.public_key)

    @property
    def enclave(self) -> str:
        """The enclave's checksummed Ethereum address, which signs every receipt."""
        return checksum_address(self.address)

    @property
    def image_id(self) -> str:
        return "0x" + image_id(self.verified.pcrs).hex()

    @property
    def simulated(self) -> bool:
        return self.verified.simulated


def signer_address(signer: str) -> bytes:
    """A receipt's `enclave` (0x-hex, 20 bytes) as bytes; UnknownSignerError when it is not one."""
    try:
        address = bytes.fromhex(signer.removeprefix("0x"))
    except ValueError:
        address = b""
    if len(address) != 20:
        raise UnknownSignerError(f"the receipt names no enclave address ({signer!r})")
    return address


def attested_signer(attested: Attested, signer: str | None) -> Attested:
    """`attested`, checked to be the enclave that signs as `signer` (when one was asked for)."""
    if signer is not None and attested.address != signer_address(signer):
        raise UnknownSignerError(f"asked for the enclave that signs as {signer}, got {attested.enclave}")
    return attested


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def check_document(content: bytes, nonce: bytes, trust: Trust) -> tuple[bytes, VerifiedAttestation, datetime]:
    """Verify an /attestation answer (raw COSE or its JSON) against the trust and the nonce just sent."""
    at = datetime.now(UTC)
    try:
        document = read_document_bytes(content)
        verified = verify(document, trust.policy, at)
    except DocumentError as exc:
        raise AttestationError(exc.code, exc.detail) from exc
    except ValueError as exc:
        raise AttestationError("malformed", str(exc)) from exc
    if verified.nonce != nonce:
        shown = "no nonce" if verified.nonce is None else f"nonce {verified.nonce.hex()[:16]}..."
        raise StaleNonceError(f"the document carries {shown}, not the nonce {nonce.hex()[:16]}... just sent")
    if trust.image_ids:
        try:
            found = image_id(verified.pcrs)
        except (KeyError, ValueError):
            found = b""
        if found not in trust.image_ids:
            raise AttestationError("image_mismatch", f"image 0x{found.hex()} is not a pinned image id")
    if verified.public_key is None or len(verified.public_key) != 64:
        raise AttestationError("no_public_key", "the document binds no 64-byte secp256k1 enclave key")
    return document, verified, at


def bind_manifest(verified: VerifiedAttestation, content: bytes) -> Manifest:
    """The GET /models manifest, accepted only when its digest is the attested user_data."""
    try:
        manifest = manifest_from_json(orjson.loads(content))
    except (orjson.JSONDecodeError, ManifestError) as exc:
        raise AttestationError("manifest_mismatch", f"GET /models is not a manifest: {exc}") from exc
    if manifest.digest != attested_manifest_digest(verified.user_data):
        raise AttestationError("manifest_mismatch", "the digest of GET /models is not the attested one")
    return manifest


def require(report: VerificationReport, needed: Collection[str], *, final: bool) -> None:
    """Raise the typed error for the report's failures, or if a needed check did not pass.

    A changed enclave key alone (signature otherwise valid) raises KeyChanged unless `final`."""
    failed = [c for c in report.checks if c.status == "fail"]
    detail = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    names = {c.name for c in failed}
    if "enclave_key" in names and "signature" not in names:
        if not final:
            signer = report.receipt.get("enclave") if report.receipt else None
            raise KeyChanged(detail, signer if isinstance(signer, str) else None)
        raise UnknownSignerError(f"not signed by the attested enclave: {detail}", report)
    if names & FORGERY_CHECKS:
        raise ForgedReceiptError(f"the receipt does not match the answer: {detail}", report)
    if "attestation" in names:
        raise AttestationError("attestation", detail, report)
    if failed:
        raise ReceiptError(detail, report)
    passed = {c.name for c in report.checks if c.status == "pass"}
    missing = [name for name in needed if name not in passed]
    if missing or not report.verified:
        raise ReceiptError(f"not verified ({report.verdict_line}); checks not passed: {missing}", report)


# --- /infer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferResult:
    """Outputs of a verified /infer, by name, with the receipt that vouches for them."""

    model: str
    outputs: dict[str, np.ndarray]
    receipt: dict[str, Any]
    report: VerificationReport

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def _data(value: Any) -> Any:
    return np.asarray(value).tolist() if isinstance(value, np.ndarray | np.generic) else value


def _tensor_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _data(value) for key, value in item.items()}


def infer_body(model: str, inputs: Any, request_id: bytes | str | None) -> dict[str, Any]:
    """An /infer request. Inputs: {name: array}, a list of tensor objects, or one input's (nested) array.

    Without a request_id the client picks a random one, so a receipt for somebody else's (or an earlier)
    identical request cannot be passed off as the answer to this one."""
    if isinstance(inputs, Mapping):
        tensors: Any = [{"name": name, "data": _data(value)} for name, value in inputs.items()]
    elif isinstance(inputs, list) and inputs and all(isinstance(i, Mapping) for i in inputs):
        tensors = [_tensor_item(i) for i in inputs]
    else:
        tensors = _data(inputs)
    if request_id is None:
        request_id = secrets.token_bytes(32)
    rid = "0x" + request_id.hex() if isinstance(request_id, bytes) else request_id
    return {"model": model, "inputs": tensors, "request_id": rid}


def check_infer(
    attested: Attested, trust: Trust, request: Any, content: bytes, *, final: bool, salt: bytes | None = None
) -> InferResult:
    """Verify an /infer answer to `request` (the parsed JSON of exactly what was sent; `salt`: it was
    sealed, and the receipt commits to its hashes with this salt)."""
    try:
        response = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ReceiptError(f"the answer is not JSON: {exc}") from exc
    report = verify_inference(
        response,
        attested.document,
        policy=trust.policy,
        at=attested.at,
        request=request,
        manifest=attested.manifest,
        image_ids=trust.image_ids,
        allow_any_image=trust.allow_any_image,
        verified=attested.verified,  # verified once, when the client attested
        salt=salt,
    )
    require(report, INFER_CHECKS, final=final)
    outputs = {name: array for name, array in tensors_from_json(response["outputs"], "output")}
    assert report.receipt is not None
    return InferResult(str(response.get("model")), outputs, report.receipt, report)
