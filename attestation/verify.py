"""Verification of an attestation document: structure, chain, COSE signature, then the caller's policy.

The order is fixed so that each failure carries the most specific reason: a document whose cabundle was
tampered with is reported as a chain problem, not only as a bad signature over the payload.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .chain import verify_chain
from .cose import sig_structure
from .document import AttestationDocument, decode
from .errors import AttestationError, Reason
from .roots import TrustedRoot, aws_nitro_root

_ES384 = ec.ECDSA(hashes.SHA384())


@dataclass(frozen=True)
class Policy:
    """What the verifier requires beyond a valid signature chained to `root`."""

    root: TrustedRoot = field(default_factory=aws_nitro_root)
    expected_pcrs: Mapping[int, bytes] = field(default_factory=dict)
    max_age_s: float | None = None
    expected_nonce: bytes | None = None
    expected_public_key: bytes | None = None
    expected_user_data: bytes | None = None
    allow_debug: bool = False
    max_clock_skew_s: float = 300.0


@dataclass(frozen=True)
class VerifiedAttestation:
    """A document that passed verification, with what it attests."""

    module_id: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    chain_subjects: tuple[str, ...]
    root_label: str
    simulated: bool
    debug: bool

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)


def verify_signature(
    doc_protected: bytes, payload: bytes, signature: bytes, key: ec.EllipticCurvePublicKey
) -> None:
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), sig_structure(doc_protected, payload), _ES384)
    except InvalidSignature as exc:
        raise AttestationError(
            Reason.BAD_SIGNATURE, "COSE signature does not verify with the leaf key"
        ) from exc


def verify(data: bytes, policy: Policy | None = None, at: datetime | None = None) -> VerifiedAttestation:
    """Verify `data` (raw COSE_Sign1 bytes) at time `at` (default now); raise AttestationError if rejected."""
    policy = policy or Policy()
    signed = decode(data)
    doc = signed.document
    when = at or datetime.now(UTC)
    chain = verify_chain(doc.certificate, doc.cabundle, policy.root, when)
    verify_signature(signed.cose.protected, signed.cose.payload, signed.cose.signature, chain.leaf_key)
    check_policy(doc, policy, when)
    return VerifiedAttestation(
        module_id=doc.module_id,
        timestamp_ms=doc.timestamp_ms,
        pcrs=doc.pcrs,
        public_key=doc.public_key,
        user_data=doc.user_data,
        nonce=doc.nonce,
        chain_subjects=chain.subjects,
        root_label=policy.root.label,
        simulated=not policy.root.is_aws,
        debug=doc.is_debug,
    )


def check_policy(doc: AttestationDocument, policy: Policy, at: datetime) -> None:
    if doc.is_debug and not policy.allow_debug:
        raise AttestationError(Reason.DEBUG_MODE, "PCR0-2 are all zero: the enclave runs in debug mode")
    for index, expected in sorted(policy.expected_pcrs.items()):
        actual = doc.pcrs.get(index)
        if actual is None or not hmac.compare_digest(actual, expected):
            shown = actual.hex() if actual is not None else "absent"
            raise AttestationError(Reason.PCR_MISMATCH, f"PCR{index} is {shown}, expected {expected.hex()}")
    age_s = (at.timestamp() * 1000 - doc.timestamp_ms) / 1000
    if age_s < -policy.max_clock_skew_s:
        raise AttestationError(Reason.TIMESTAMP_IN_FUTURE, f"document is {-age_s:.0f} s in the future")
    if policy.max_age_s is not None and age_s > policy.max_age_s:
        raise AttestationError(Reason.STALE, f"document is {age_s:.0f} s old, limit {policy.max_age_s:.0f} s")
    _expect(Reason.NONCE_MISMATCH, "nonce", doc.nonce, policy.expected_nonce)
    _expect(Reason.PUBLIC_KEY_MISMATCH, "public_key", doc.public_key, policy.expected_public_key)
    _expect(Reason.USER_DATA_MISMATCH, "user_data", doc.user_data, policy.expected_user_data)


def _expect(reason: Reason, name: str, actual: bytes | None, expected: bytes | None) -> None:
    if expected is not None and (actual is None or not hmac.compare_digest(actual, expected)):
        raise AttestationError(reason, f"{name} does not match the expected value")
