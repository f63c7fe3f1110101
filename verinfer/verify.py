"""Offline verification of an inference, as a skeptic runs it: nothing is taken from the server on trust.

Given the response (with its receipt), the request that produced it, the attestation document and the
model manifest, check that:
  1. the attestation document chains to the pinned root and satisfies the policy: the pinned image (PCRs or
     image ids), the auditor's nonce, freshness;
  2. the public key it binds is the receipt's enclave address;
  3. the receipt's EIP-712 signature recovers to that address;
  4. outputHash recomputes from the returned tensors, inputHash from the request's tensors;
  5. the answer is for the model the request names, and the receipt's modelHash is that model's sha256 in the
     manifest whose digest is the attested user_data;
  6. the receipt's requestId is the request's request_id, when the request sets one.

Each check passes, fails or is skipped (not enough evidence given). The verdict (`VerificationReport.verdict`)
is VERIFIED only when no check fails AND the image is pinned (PCR0, PCR1 and PCR2, or image ids): a valid
chain alone proves that *some* enclave signed, not that it runs the published code. Without a pin the verdict
is UNPINNED, unless the caller explicitly accepts any image (`allow_any_image`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeGuard

from attestation import AttestationError, Policy, VerifiedAttestation, decode, verify
from attestation.encoding import read_document_bytes
from protocol.addresses import address_of, checksum_address
from protocol.binding import BindingError, split_user_data
from protocol.errors import ProtocolError, RequestError
from protocol.hashing import keccak256
from protocol.hpke import KEM_X25519_SHA256
from protocol.images import image_id
from protocol.inputs import parse_inputs
from protocol.manifest import Manifest, ModelEntry, parse_manifest
from protocol.ohttp import decode_key_configs
from protocol.receipts import ReceiptError, SignedReceipt, recover_signer
from protocol.sealing import commit_input, commit_output
from protocol.tensors import BY_V2, encode_tensors, tensors_from_json

Status = Literal["pass", "fail", "skipped"]
Verdict = Literal["VERIFIED", "UNPINNED", "REJECTED"]
IMAGE_PCRS = (0, 1, 2)
# Without a manifest, several self-describing inputs are tried in every order up to this many tensors
# (the enclave hashes them in the model's declared order, which only the manifest states).
MAX_UNORDERED_INPUTS = 5


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
    pinned: bool = False
    allow_any_image: bool = False
    image_id: str | None = None
    partial: str | None = None  # a streamed completion verified only up to its last checkpoint

    @property
    def ok(self) -> bool:
        """No check failed. Not the verdict: see `verified`, which also requires a pinned image."""
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    @property
    def verdict(self) -> Verdict:
        if not self.ok:
            return "REJECTED"
        return "VERIFIED" if self.pinned or self.allow_any_image else "UNPINNED"

    @property
    def verified(self) -> bool:
        return self.verdict == "VERIFIED"

    @property
    def verdict_line(self) -> str:
        line: str = self.verdict
        if line == "VERIFIED" and not self.pinned:
            line = "VERIFIED (ANY IMAGE: not pinned)"
        elif line == "UNPINNED":
            line = (
                "UNPINNED: every check passed, but no image is pinned (give --pcr 0=, 1= and 2=, --image-id "
                "or --policy; --allow-any-image to accept any image)"
            )
        if self.partial is not None and line.startswith("VERIFIED"):
            line += f" PREFIX ONLY: {self.partial}"
        return line + (" [SIMULATED attestation: not hardware]" if self.simulated else "")

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "verified": self.verified,
            "pinned": self.pinned,
            "simulated": self.simulated,
            "image_id": self.image_id,
            "partial": self.partial,
            "receipt": self.receipt,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
        }


def load_attestation(raw: bytes) -> bytes:
    """A document from a file or a response body: raw COSE, hex, base64, or the JSON of GET /attestation.

    Raises ValueError (attestation.encoding.DocumentFormatError) for JSON without a base64 "document"."""
    return read_document_bytes(raw)


def is_pinned(policy: Policy, image_ids: Collection[bytes] = ()) -> bool:
    """Whether the policy names the image: PCR0, PCR1 and PCR2 together, or at least one image id."""
    return bool(image_ids) or all(i in policy.expected_pcrs for i in IMAGE_PCRS)


# --- the policy file of `verinfer verify --policy FILE` ---

POLICY_KEYS = frozenset(("root", "pcrs", "image_ids", "allow_debug", "max_age_s"))


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """`--policy FILE`: what an auditor pins once and reuses. Every key is optional; unknown keys are errors.

    {
      "root": "aws" | "PATH.pem",            trusted root; a relative path is relative to the policy file
      "pcrs": {"0": "HEX", "1": "HEX", ...}, expected PCR values (PCR0-2 together pin the image)
      "image_ids": ["0xHEX", ...],           accepted images, keccak256(PCR0 || PCR1 || PCR2): any of them
      "allow_debug": false,                  accept debug-mode enclaves (all-zero PCR0-2)
      "max_age_s": 600                       reject attestations older than this (seconds)
    }
    """

    root: str | None = None
    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    image_ids: tuple[bytes, ...] = ()
    allow_debug: bool = False
    max_age_s: float | None = None


def parse_image_id(text: Any) -> bytes:
    """A 32-byte image id as 0x-hex (the contract's bytes32), or ValueError."""
    try:
        value = bytes.fromhex(text.removeprefix("0x")) if isinstance(text, str) else b""
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(f"an image id is 0x-hex of 32 bytes (keccak256(PCR0 || PCR1 || PCR2)), got {text!r}")
    return value


def parse_policy(data: Any, base: Path = Path(".")) -> PolicyFile:
    """A PolicyFile from parsed JSON; paths are relative to `base`. Raises ValueError naming the bad key."""
    if not isinstance(data, dict):
        raise ValueError("a policy is a JSON object")
    unknown = sorted(set(data) - POLICY_KEYS)
    if unknown:
        raise ValueError(f"unknown policy key(s) {unknown}; known: {sorted(POLICY_KEYS)}")
    root = data.get("root")
    if root is not None and not (isinstance(root, str) and root):
        raise ValueError("policy 'root' is 'aws' or the path of a PEM file")
    if root is not None and root != "aws":
        root = str(base / root)
    pcrs: dict[int, bytes] = {}
    raw_pcrs = data.get("pcrs", {})
    if not isinstance(raw_pcrs, dict):
        raise ValueError('policy "pcrs" is an object {"N": "HEX"}')
    for index, value in raw_pcrs.items():
        if not (isinstance(index, str) and index.isdigit() and int(index) < 32 and isinstance(value, str)):
            raise ValueError(f'policy "pcrs" maps "0".."31" to hex strings, got {index!r}: {value!r}')
        try:
            pcrs[int(index)] = bytes.fromhex(value.removeprefix("0x"))
        except ValueError as exc:
            raise ValueError(f"policy PCR{index} is not hex: {value!r}") from exc
    raw_images = data.get("image_ids", [])
    if not isinstance(raw_images, list):
        raise ValueError('policy "image_ids" is a list of 0x-hex image ids')
    allow_debug = data.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise ValueError('policy "allow_debug" is true or false')
    max_age = data.get("max_age_s")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int | float)):
        raise ValueError('policy "max_age_s" is a number of seconds')
    return PolicyFile(
        root=root,
        pcrs=pcrs,
        image_ids=tuple(parse_image_id(value) for value in raw_images),
        allow_debug=allow_debug,
        max_age_s=None if max_age is None else float(max_age),
    )


def load_policy(path: str | Path) -> PolicyFile:
    """Read a policy file (format: PolicyFile). Raises OSError or ValueError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"policy {path} is not JSON: {exc}") from exc
    return parse_policy(data, path.parent)


# --- the pieces of a response and a request ---


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
    return keccak256(encode_tensors(tensors_from_json(outputs, "output")))


def self_describing(inputs: Any) -> TypeGuard[list[Any]]:
    """Whether request inputs can be encoded without the model's signature: V2-style tensor objects."""
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("datatype"), str)
            and item["datatype"] in BY_V2
            and isinstance(item.get("shape"), list)
            and "data" in item
            for item in inputs
        )
    )


def response_model(response: Any) -> str | None:
    """The model an /infer response (`model`) or a V2 response (`model_name`) says it is from."""
    if isinstance(response, dict):
        name = response.get("model") or response.get("model_name")
        return name if isinstance(name, str) else None
    return None


def request_id_of(request: Any) -> Any:
    """The request_id a request sets: /infer `request_id`, V2 `parameters.request_id`; None if unset."""
    if not isinstance(request, dict):
        return None
    if request.get("request_id") is not None:
        return request["request_id"]
    parameters = request.get("parameters")
    return parameters.get("request_id") if isinstance(parameters, dict) else None


# --- verification ---


def verify_inference(
    response: Any,
    attestation: bytes,
    *,
    policy: Policy,
    at: datetime | None = None,
    request: Any = None,
    manifest: Manifest | None = None,
    model: str | None = None,
    image_ids: Collection[bytes] = (),
    allow_any_image: bool = False,
    verified: VerifiedAttestation | None = None,
    salt: bytes | None = None,
    key_configs: bytes | None = None,
) -> VerificationReport:
    """Check everything the evidence allows; see the module docstring.

    `model` names the model the request was sent to when the request does not (a V2 request, whose model is
    in the URL). `image_ids` pins the image like PCR0-2 do (any of them is accepted). `verified` is the
    result of `attestation.verify(attestation, policy, at)` when the caller has already run it for this
    document (verinfer.client, once per enclave): the chain is then not verified again for every receipt.
    `salt` is a sealed request's commitment salt: its receipt commits to the hashes (protocol/sealing.py).
    `key_configs` (the enclave's `application/ohttp-keys`, e.g. `ohttpKeys` of GET /attestation) adds the
    check that they name the encryption key the document binds."""
    seal_in, seal_out = commitments(salt)
    report = VerificationReport(
        simulated=not policy.root.is_aws,
        pinned=is_pinned(policy, image_ids),
        allow_any_image=allow_any_image,
    )
    try:
        signed = SignedReceipt.from_json(receipt_of(response))
    except ReceiptError as exc:
        report.add("receipt", "fail", str(exc))
        return report
    report.receipt = signed.to_json()
    receipt = signed.receipt
    report.add("receipt", "pass", f"request {report.receipt['requestId']} at {receipt.timestamp_ms} ms")

    user_data = check_signer(
        report, signed, attestation, policy=policy, at=at, image_ids=image_ids, verified=verified
    )
    if key_configs is not None:
        check_key_binding(report, key_configs, user_data)

    try:
        recomputed = output_hash(response.get("outputs"))
        status: Status = "pass" if seal_out(recomputed) == receipt.output_hash else "fail"
        report.add(
            "output_hash", status, f"keccak256 of the returned outputs is 0x{recomputed.hex()}{_salted(salt)}"
        )
    except (ValueError, TypeError, KeyError) as exc:
        report.add("output_hash", "fail", f"cannot recompute: {exc}")

    requested = model
    named = request.get("model") if isinstance(request, dict) else None
    if requested is None and isinstance(named, str):
        requested = named
    claimed = response_model(response)
    name = requested or claimed
    entry = manifest.models.get(name) if manifest is not None and name is not None else None
    _check_inputs(report, request, entry, receipt.input_hash, manifest=manifest, name=name, seal=seal_in)
    _check_model(
        report,
        manifest=manifest,
        user_data=user_data,
        model_hash=receipt.model_hash,
        requested=requested,
        named=named if isinstance(named, str) else None,
        claimed=claimed,
        with_request=request is not None,
    )
    _check_request_id(report, request, receipt.request_id)
    return report


def check_signer(
    report: VerificationReport,
    signed: SignedReceipt,
    attestation: bytes,
    *,
    policy: Policy,
    at: datetime | None,
    image_ids: Collection[bytes],
    verified: VerifiedAttestation | None = None,
) -> bytes | None:
    """Checks 1-3: the attestation, the key it binds is the receipt's enclave, the signature recovers to
    it. Returns the attested user_data (the manifest digest) for the model check."""
    receipt = signed.receipt
    public_key, user_data = _check_attestation(report, attestation, policy, at, image_ids, verified=verified)

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
    return user_data


def _check_attestation(
    report: VerificationReport,
    attestation: bytes,
    policy: Policy,
    at: datetime | None,
    image_ids: Collection[bytes],
    *,
    verified: VerifiedAttestation | None = None,
) -> tuple[bytes | None, bytes | None]:
    """The attestation check (chain, policy, image pin); returns the (public key, user data) it binds."""
    try:
        doc = decode(attestation).document
    except AttestationError:
        doc = None
    if doc is not None and all(i in doc.pcrs for i in IMAGE_PCRS):
        report.image_id = "0x" + image_id(doc.pcrs).hex()
    try:
        attested = verify(attestation, policy, at) if verified is None else verified
    except AttestationError as exc:
        report.add("attestation", "fail", f"{exc.code}: {exc.detail}")
        return (doc.public_key, doc.user_data) if doc is not None else (None, None)
    if image_ids and (report.image_id is None or bytes.fromhex(report.image_id[2:]) not in image_ids):
        shown = ", ".join("0x" + i.hex() for i in image_ids)
        report.add(
            "attestation", "fail", f"image_mismatch: image {report.image_id} is not a pinned image ({shown})"
        )
        return attested.public_key, attested.user_data
    root = "SIMULATOR root (not hardware)" if attested.simulated else policy.root.label
    pins = ["pinned" if report.pinned else "NOT pinned"]
    if policy.expected_nonce is not None:
        pins.append("your nonce")
    if policy.max_age_s is not None:
        pins.append(f"at most {policy.max_age_s:g} s old")
    report.add(
        "attestation",
        "pass",
        f"chains to {root}; module {attested.module_id}; image {report.image_id} ({', '.join(pins)})",
    )
    return attested.public_key, attested.user_data


def _check_inputs(
    report: VerificationReport,
    request: Any,
    entry: ModelEntry | None,
    expected: bytes,
    *,
    manifest: Manifest | None,
    name: str | None,
    seal: Commitment,
) -> None:
    if request is None:
        report.add("input_hash", "skipped", "no request given: inputs not checked")
        return
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if entry is None:
        if not self_describing(inputs):
            if manifest is None:
                why = "no manifest given"
            else:
                why = "no model named" if name is None else f"model {name!r} is not in the manifest"
            report.add(
                "input_hash",
                "skipped",
                f"{why}: the request's tensors do not all state name, datatype and shape, so encoding them "
                "needs the model's input signature from the manifest (give --manifest)",
            )
            return
        _check_described_inputs(report, inputs, expected, seal)
        return
    try:
        parsed = parse_inputs(entry, inputs)
    except RequestError as exc:
        report.add("input_hash", "fail", f"request inputs do not parse: {exc.message}")
        return
    recomputed = keccak256(encode_tensors(parsed))
    report.add(
        "input_hash",
        "pass" if seal(recomputed) == expected else "fail",
        f"keccak256 of the request's inputs is 0x{recomputed.hex()}",
    )


def _check_described_inputs(
    report: VerificationReport, inputs: list[Any], expected: bytes, seal: Commitment
) -> None:
    """Inputs encoded from their own datatype and shape (no manifest): the enclave hashes them in the
    model's declared order, so with several inputs each order is tried (a match in any order is a proof)."""
    try:
        tensors = tensors_from_json(inputs, "input")
    except (ValueError, TypeError, KeyError) as exc:
        report.add("input_hash", "fail", f"request inputs do not encode: {exc}")
        return
    first = keccak256(encode_tensors(tensors))
    orders = itertools.permutations(tensors) if len(tensors) <= MAX_UNORDERED_INPUTS else iter([tensors])
    for order in orders:
        recomputed = keccak256(encode_tensors(list(order)))
        if seal(recomputed) == expected:
            report.add(
                "input_hash",
                "pass",
                f"keccak256 of the request's self-describing inputs is 0x{recomputed.hex()} (no manifest)",
            )
            return
    report.add(
        "input_hash",
        "fail",
        f"keccak256 of the request's self-describing inputs is 0x{first.hex()} (no manifest"
        + (", every order tried)" if 1 < len(tensors) <= MAX_UNORDERED_INPUTS else ")"),
    )


Commitment = Callable[[bytes], bytes]


def _unchanged(digest: bytes) -> bytes:
    return digest


def commitments(salt: bytes | None) -> tuple[Commitment, Commitment]:
    """What a receipt's inputHash and outputHash are of the plain hashes: themselves, or for a sealed
    request their salted commitments (protocol/sealing.py)."""
    if salt is None:
        return _unchanged, _unchanged
    return partial(commit_input, salt), partial(commit_output, salt)


def _salted(salt: bytes | None) -> str:
    return "" if salt is None else " (committed with the sealed request's salt)"


def check_key_binding(report: VerificationReport, key_configs: bytes, user_data: bytes | None) -> None:
    """encryption_key: every X25519 key configuration offered names the key user_data[32:64] binds, so
    what is sealed to it can be opened only inside the attested enclave."""
    try:
        bound = split_user_data(user_data).encryption_key
        configs = decode_key_configs(key_configs)
    except ProtocolError as exc:
        report.add("encryption_key", "fail", str(exc))
        return
    offered = [config.public_key for config in configs if config.kem_id == KEM_X25519_SHA256]
    if bound is None:
        report.add("encryption_key", "fail", "a key configuration is offered, but the document binds no key")
    elif not offered or any(key != bound for key in offered):
        report.add(
            "encryption_key", "fail", "the key configuration names a key the attestation does not bind"
        )
    else:
        report.add(
            "encryption_key", "pass", f"the OHTTP key configuration names the attested key 0x{bound.hex()}"
        )


def attested_manifest_digest(user_data: bytes | None) -> bytes | None:
    """The manifest digest an attested user_data names (protocol/binding.py), None if it names none."""
    try:
        return split_user_data(user_data).manifest_digest
    except BindingError:
        return None


def _check_model(
    report: VerificationReport,
    *,
    manifest: Manifest | None,
    user_data: bytes | None,
    model_hash: bytes,
    requested: str | None,
    named: str | None,
    claimed: str | None,
    with_request: bool,
) -> None:
    """The answer is for the requested model: the response names it, and modelHash is its attested sha256."""
    if with_request and requested is None:
        report.add(
            "model",
            "fail",
            "the request names no model (a V2 request has it in the URL /v2/models/NAME/infer): "
            "give --model NAME",
        )
        return
    if requested is not None and named is not None and named != requested:
        report.add("model", "fail", f"the request names model {named!r}, but --model says {requested!r}")
        return
    if requested is not None and claimed is not None and claimed != requested:
        report.add(
            "model", "fail", f"the response is from model {claimed!r}, but the request asked {requested!r}"
        )
        return
    name = requested or claimed
    source = "the requested model" if requested is not None else "the model the response names (no request)"
    if manifest is None:
        report.add(
            "model",
            "skipped",
            f"no manifest given: modelHash not tied to the attested model set ({source}: {name})",
        )
        return
    if attested_manifest_digest(user_data) != manifest.digest:
        report.add("model", "fail", "the manifest's digest is not the attested user_data (its first half)")
        return
    if name is None:
        report.add("model", "fail", "no model named: give the request (or --model NAME)")
        return
    entry = manifest.models.get(name)
    if entry is None:
        report.add("model", "fail", f"model {name!r} is not in the attested manifest")
        return
    if entry.model_hash != model_hash:
        other = next((m.name for m in manifest.models.values() if m.model_hash == model_hash), None)
        report.add(
            "model",
            "fail",
            f"modelHash is the sha256 of {other!r}, not of {name!r}"
            if other
            else f"modelHash is not the sha256 of {name!r} in the attested manifest",
        )
        return
    report.add(
        "model",
        "pass",
        f"{entry.name} v{entry.version} (sha256 {entry.sha256[:16]}...), {source}, is in the attested "
        "manifest and is the receipt's modelHash",
    )


def _check_request_id(report: VerificationReport, request: Any, actual: bytes) -> None:
    """Only when the request sets a request_id: with none, the enclave picked a random one."""
    wanted = request_id_of(request)
    if wanted is None:
        return
    try:
        raw = bytes.fromhex(wanted.removeprefix("0x")) if isinstance(wanted, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        report.add(
            "request_id", "fail", f"the request's request_id is not 0x-hex of 32 bytes: {wanted!r:.80}"
        )
    elif raw != actual:
        report.add(
            "request_id",
            "fail",
            f"the receipt's requestId is 0x{actual.hex()}, the request's is 0x{raw.hex()}",
        )
    else:
        report.add("request_id", "pass", "the receipt's requestId is the request's request_id")


def manifest_from_json(data: Any) -> Manifest:
    """A manifest as served by GET /models or read from models/manifest.json (no ONNX files needed)."""
    return parse_manifest(data, Path("."))
