"""COSE_Sign1 (RFC 9052) as Nitro uses it: ES384, untagged or tag 18, raw r||s signatures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import cbor
from .errors import AttestationError, Reason, malformed

COSE_SIGN1_TAG = 18
ALG_ES384 = -35
ES384_PROTECTED = b"\xa1\x01\x38\x22"  # {1: -35}, the exact bytes Nitro emits
SIGNATURE_LENGTH = 96
# Hardware documents are 4.4 to 7.6 KiB (the largest carries 1024-byte public_key, user_data and nonce);
# even 32 PCRs of 64 bytes and maximal optional fields stay under 10 KiB. Anything larger is refused
# before it is parsed.
MAX_DOCUMENT = 16 * 1024
_SIG1_CONTEXT = b"\x6aSignature1"
_EMPTY_AAD = b"\x40"


@dataclass(frozen=True, slots=True)
class CoseSign1:
    protected: bytes
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes ES384 signs: ["Signature1", protected, h'', payload], built without a generic encoder."""
    return b"".join(
        (
            b"\x84",
            _SIG1_CONTEXT,
            cbor.head(2, len(protected)),
            protected,
            _EMPTY_AAD,
            cbor.head(2, len(payload)),
            payload,
        )
    )


def encode_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """Untagged COSE_Sign1 with an empty unprotected map, laid out exactly as Nitro hardware does."""
    return b"".join(
        (
            b"\x84",
            cbor.head(2, len(protected)),
            protected,
            b"\xa0",
            cbor.head(2, len(payload)),
            payload,
            cbor.head(2, len(signature)),
            signature,
        )
    )


def decode_sign1(data: bytes) -> CoseSign1:
    """Split a COSE_Sign1 and check its protected header says ES384; the payload stays raw bytes."""
    if len(data) > MAX_DOCUMENT:
        raise malformed("cose", f"document is {len(data)} bytes, at most {MAX_DOCUMENT} are accepted")
    try:
        top = cbor.loads(data)
    except cbor.CborError as exc:
        raise malformed("cose", f"not CBOR: {exc}") from exc
    if isinstance(top, cbor.Tagged):
        if top.tag != COSE_SIGN1_TAG:
            raise malformed("cose", f"tag {top.tag} is not COSE_Sign1 (18)")
        top = top.value
    if not isinstance(top, list) or len(top) != 4:
        raise malformed("cose", "COSE_Sign1 must be an array of four items")
    protected, unprotected, payload, signature = top
    if not isinstance(protected, bytes):
        raise malformed("protected", "protected header must be a byte string")
    _check_protected(protected)
    # The unprotected header is not signed, so nothing in it is trusted; Nitro sends {} and some
    # re-encoders send null.
    if unprotected is None:
        unprotected = {}
    if not isinstance(unprotected, dict):
        raise malformed("unprotected", "unprotected header must be a map")
    if not isinstance(payload, bytes):
        raise malformed("payload", "payload must be a byte string")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH:
        raise malformed("signature", f"signature must be {SIGNATURE_LENGTH} raw bytes (r||s)")
    return CoseSign1(protected, unprotected, payload, signature)


def _check_protected(protected: bytes) -> None:
    if protected == ES384_PROTECTED:
        return
    try:
        header = cbor.loads(protected)
    except cbor.CborError as exc:
        raise malformed("protected", f"protected header is not CBOR: {exc}") from exc
    if not isinstance(header, dict) or 1 not in header:
        raise malformed("protected", "protected header must be a map with an algorithm (label 1)")
    if header[1] != ALG_ES384:
        raise AttestationError(
            Reason.UNSUPPORTED_ALGORITHM, f"algorithm {header[1]!r} is not ES384 (-35)", None
        )
    if len(header) != 1:
        raise malformed("protected", "protected header may only carry the algorithm")
