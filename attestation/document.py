"""The Nitro attestation document payload: strict decoding into a typed object, and encoding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from . import cbor
from .cose import CoseSign1, decode_sign1
from .errors import malformed

PCR_LENGTH = 48  # SHA384, the only digest a Nitro document may name (see _digest)
MAX_PCRS = 32
MAX_OPTIONAL_FIELD = 1024
MAX_MODULE_ID = 256
MAX_CERTIFICATE = 8 * 1024
# Nitro sends the root and three intermediates (regional, zonal, instance). A few more are allowed so that a
# deeper hierarchy would still decode, but the bundle is bounded before any certificate is parsed.
MAX_CABUNDLE = 8
# The AWS Nitro root G1 became valid on 2019-10-28; a millisecond timestamp before it is a unit error.
EARLIEST_TIMESTAMP_MS = 1_572_269_285_000
FIELD_ORDER = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_REQUIRED = frozenset(FIELD_ORDER[:6])
_KNOWN = frozenset(FIELD_ORDER)


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def is_debug(self) -> bool:
        """Debug-mode enclaves report all-zero PCR0-2 (the image is not measured)."""
        return all(i in self.pcrs and not any(self.pcrs[i]) for i in (0, 1, 2))

    def encode_payload(self, *, indefinite: bool = False) -> bytes:
        """The payload map in hardware's field order; `indefinite` mimics newer hardware's encoding."""
        fields: dict[str, Any] = {
            "module_id": self.module_id,
            "digest": self.digest,
            "timestamp": self.timestamp_ms,
            "pcrs": dict(sorted(self.pcrs.items())),
            "certificate": self.certificate,
            "cabundle": list(self.cabundle),
            "public_key": self.public_key,
            "user_data": self.user_data,
            "nonce": self.nonce,
        }
        if not indefinite:
            return bytes(cbor2.dumps(fields))
        body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items())
        return b"\xbf" + body + b"\xff"


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A decoded document together with the exact bytes its signature covers."""

    cose: CoseSign1
    document: AttestationDocument


def decode(data: bytes) -> SignedDocument:
    """Decode COSE_Sign1 and its payload; raises AttestationError naming the first bad field.

    Bounded before any cryptography: the whole document at cose.MAX_DOCUMENT bytes (`malformed:cose`), the
    cabundle at MAX_CABUNDLE certificates and each certificate at MAX_CERTIFICATE bytes.
    """
    cose = decode_sign1(data)
    return SignedDocument(cose, parse_payload(cose.payload))


def parse_payload(payload: bytes) -> AttestationDocument:
    try:
        fields = cbor.loads(payload)
    except cbor.CborError as exc:
        raise malformed("payload", f"payload is not CBOR: {exc}") from exc
    if not isinstance(fields, dict):
        raise malformed("payload", "payload must be a map")
    unknown = [k for k in fields if k not in _KNOWN]
    if unknown:
        raise malformed("payload", f"unknown payload field(s): {unknown!r}")
    missing = [k for k in FIELD_ORDER if k in _REQUIRED and k not in fields]
    if missing:
        raise malformed(missing[0], "required field is missing")
    return AttestationDocument(
        module_id=_module_id(fields["module_id"]),
        digest=_digest(fields["digest"]),
        timestamp_ms=_timestamp(fields["timestamp"]),
        pcrs=_pcrs(fields["pcrs"]),
        certificate=_der("certificate", fields["certificate"], "certificate"),
        cabundle=_cabundle(fields["cabundle"]),
        public_key=_optional("public_key", fields.get("public_key")),
        user_data=_optional("user_data", fields.get("user_data")),
        nonce=_optional("nonce", fields.get("nonce")),
    )


def _module_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MODULE_ID:
        raise malformed("module_id", f"must be a non-empty text string of at most {MAX_MODULE_ID} chars")
    return value


def _digest(value: Any) -> str:
    if value != "SHA384":
        raise malformed("digest", f"digest must be 'SHA384', got {value!r}")
    return "SHA384"


def _timestamp(value: Any) -> int:
    if type(value) is not int or not EARLIEST_TIMESTAMP_MS <= value < 2**64:
        raise malformed("timestamp", f"must be milliseconds since the epoch (uint), got {value!r}")
    return value


def _pcrs(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCRS:
        raise malformed("pcrs", f"must be a map of 1 to {MAX_PCRS} entries")
    for index, digest in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise malformed("pcrs", f"PCR index {index!r} is not in 0..{MAX_PCRS - 1}")
        if not isinstance(digest, bytes) or len(digest) != PCR_LENGTH:
            # One length for all: mixed 32/64-byte PCRs would make keccak(PCR0 || PCR1 || PCR2) ambiguous.
            raise malformed("pcrs", f"PCR{index} must be {PCR_LENGTH} bytes (SHA384)")
    return value


def _der(field: str, value: Any, where: str) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_CERTIFICATE:
        raise malformed(
            field, f"{where}: must be a DER certificate (byte string of 1 to {MAX_CERTIFICATE} bytes)"
        )
    return value


def _cabundle(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not value:
        raise malformed("cabundle", "must be a non-empty array of DER certificates, root first")
    if len(value) > MAX_CABUNDLE:
        raise malformed(
            "cabundle", f"has {len(value)} certificates, at most {MAX_CABUNDLE} (Nitro sends root + 3)"
        )
    return tuple(_der("cabundle", item, f"cabundle[{i}]") for i, item in enumerate(value))


def _optional(field: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > MAX_OPTIONAL_FIELD:
        raise malformed(field, f"must be absent, null or at most {MAX_OPTIONAL_FIELD} bytes")
    return value
