"""The enclave service without HTTP: boot (key, attestation, models), inference with signed receipts."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from attestation.document import decode
from attestation.nsm import NsmClient
from protocol import merkle
from protocol.addresses import checksum_address
from protocol.binding import attested_user_data
from protocol.errors import RequestError, bad_request, unprocessable
from protocol.hashing import keccak256
from protocol.hpke import SealingKey
from protocol.manifest import Manifest
from protocol.receipts import Receipt, SignedReceipt, batch_digest, sign_receipt
from protocol.sealing import commit_input, commit_output
from protocol.tensors import encode_tensors

from .runtime import LoadedModel, ModelRuntime
from .signer import EnclaveKey

log = logging.getLogger("verinfer.enclave")
MAX_NONCE = 1024
RECEIPT_LOG_SIZE = 100_000
MAX_BATCH = 4096


@dataclass(frozen=True, slots=True)
class InferenceResult:
    model: LoadedModel
    outputs: list[tuple[str, np.ndarray]]
    receipt: SignedReceipt


def parse_request_id(value: Any) -> bytes:
    """The caller's 32-byte request id (0x-hex), or a fresh random one."""
    if value is None:
        return os.urandom(32)
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw
    raise bad_request("invalid_request_id", "request_id must be 0x-prefixed hex of 32 bytes")


def parse_nonce(value: str | None) -> bytes | None:
    if value is None or value == "":
        return None
    try:
        nonce = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise bad_request("invalid_nonce", "nonce must be hex") from exc
    if len(nonce) > MAX_NONCE:
        raise bad_request("invalid_nonce", f"nonce must be at most {MAX_NONCE} bytes")
    return nonce


def check_finite(model: LoadedModel, outputs: list[tuple[str, np.ndarray]]) -> None:
    """Refuse (422) an answer holding NaN or Inf: never signed, since no consumer could act on it."""
    for name, array in outputs:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise unprocessable(
                "non_finite_output",
                f"{model.entry.name} produced a non-finite value in {name!r} for this input; "
                "nothing was signed",
            )


class EnclaveService:
    """Owns the enclave's keys: the secp256k1 signing key and the X25519 key requests are sealed to. Boot
    order: keys, attestation binding both and the manifest, models warmed."""

    def __init__(
        self, manifest: Manifest, nsm: NsmClient, *, receipt_log_size: int = RECEIPT_LOG_SIZE
    ) -> None:
        self.manifest = manifest
        # Receipts issued, by sequence number, for batch anchoring: (first sequence number, receipts).
        self.receipt_log: deque[SignedReceipt] = deque(maxlen=receipt_log_size)
        self.receipt_log_start = 0
        self.nsm = nsm
        self.simulated = nsm.simulated
        self.key = EnclaveKey()
        self.sealing_key = SealingKey.generate()
        self.manifest_digest = manifest.digest
        self.user_data = attested_user_data(self.manifest_digest, self.sealing_key.public_key)
        self.boot_document = nsm.attestation(user_data=self.user_data, public_key=self.key.public_key64)
        self.runtime = ModelRuntime(manifest)
        self.address = checksum_address(self.key.address)
        self.ready = True
        log.info(
            "enclave ready: address %s, %d models, NSM %s",
            self.address,
            len(self.runtime.models),
            "SIMULATED (not hardware; development only)" if self.simulated else "Nitro hardware",
        )

    def infer(
        self,
        model: LoadedModel,
        inputs: list[tuple[str, np.ndarray]],
        request_id: bytes,
        only: set[str] | None = None,
    ) -> InferenceResult:
        """Run, hash, sign, record. With `only`, outputs (and outputHash) are just those, in model order."""
        result = self.sign_outputs(model, inputs, model.run(dict(inputs)), request_id, only)
        self.record(result.receipt)
        return result

    def sign_outputs(
        self,
        model: LoadedModel,
        inputs: list[tuple[str, np.ndarray]],
        outputs: list[tuple[str, np.ndarray]],
        request_id: bytes,
        only: set[str] | None,
        *,
        salt: bytes | None = None,
    ) -> InferenceResult:
        """Hash and sign one request's outputs, without recording them: the dynamic batcher signs each
        request of a batch and records the receipts as it answers them, in answer order. A sealed request
        (`salt`) is signed over salted commitments to its hashes, so the public receipt hides its tensors.

        A model can overflow to NaN/Inf on finite inputs (an MLP fed 1e38); such an answer is refused
        with 422 and never signed, because JSON cannot carry it and no consumer could act on it.
        """
        if only is not None:
            outputs = [(name, array) for name, array in outputs if name in only]
        check_finite(model, outputs)
        input_hash = keccak256(encode_tensors(inputs))
        output_hash = keccak256(encode_tensors(outputs))
        if salt is not None:
            input_hash, output_hash = commit_input(salt, input_hash), commit_output(salt, output_hash)
        return InferenceResult(model, outputs, self.sign(model, request_id, input_hash, output_hash))

    def sign(
        self, model: LoadedModel, request_id: bytes, input_hash: bytes, output_hash: bytes
    ) -> SignedReceipt:
        """A receipt over hashes the caller computed, stamped now."""
        receipt = Receipt(
            request_id=request_id,
            model_hash=model.entry.model_hash,
            input_hash=input_hash,
            output_hash=output_hash,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        return sign_receipt(self.key, receipt)

    def record(self, signed: SignedReceipt) -> None:
        """Keep a final receipt for batch anchoring (POST /receipts/batch)."""
        if len(self.receipt_log) == self.receipt_log.maxlen:
            self.receipt_log_start += 1
        self.receipt_log.append(signed)

    def receipt_batch(self, start: int, limit: int) -> dict[str, Any]:
        """A signed Merkle root over receipts [start, start + limit) of this enclave's log (PROTOCOL.md)."""
        if start < self.receipt_log_start:
            raise RequestError(
                410, "receipts_evicted", f"receipts before {self.receipt_log_start} are no longer kept"
            )
        offset = start - self.receipt_log_start
        # Past the log's end, nothing to slice (and islice's arguments must stay below sys.maxsize).
        batch = (
            list(itertools.islice(self.receipt_log, offset, offset + min(limit, MAX_BATCH)))
            if offset < len(self.receipt_log)
            else []
        )
        if not batch:
            return {"from": start, "count": 0, "next": start}
        root = merkle.root([r.receipt.digest() for r in batch])
        return {
            "from": start,
            "count": len(batch),
            "next": start + len(batch),
            "root": "0x" + root.hex(),
            "enclave": self.address,
            "signature": "0x" + self.key.sign_digest(batch_digest(root, len(batch))).hex(),
            "receipts": [r.to_json() for r in batch],
        }

    def attestation(self, nonce: bytes | None) -> bytes:
        """A fresh document with the caller's nonce, binding the same keys and manifest digest."""
        return self.nsm.attestation(user_data=self.user_data, nonce=nonce, public_key=self.key.public_key64)

    def attestation_json(self, document: bytes) -> dict[str, Any]:
        doc = decode(document).document
        return {
            "simulated": self.simulated,
            "warning": "SIMULATED attestation: not produced by AWS Nitro hardware"
            if self.simulated
            else None,
            "format": "COSE_Sign1",
            "document": base64.b64encode(document).decode(),
            "enclave": self.address,
            "publicKey": "0x" + self.key.public_key64.hex(),
            "manifestDigest": "0x" + self.manifest_digest.hex(),
            "encryptionKey": "0x" + self.sealing_key.public_key.hex(),
            "summary": {
                "module_id": doc.module_id,
                "timestamp_ms": doc.timestamp_ms,
                "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
                "nonce": None if doc.nonce is None else doc.nonce.hex(),
                "user_data": None if doc.user_data is None else doc.user_data.hex(),
                "public_key": None if doc.public_key is None else doc.public_key.hex(),
            },
        }
