"""The one exception type the package raises, with stable machine-readable reason codes."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes. `malformed` is always reported with its field: `malformed:<field>`."""

    MALFORMED = "malformed"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    BAD_SIGNATURE = "bad_signature"
    ROOT_NOT_TRUSTED = "root_not_trusted"
    CHAIN_BROKEN = "chain_broken"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_CONSTRAINTS = "cert_constraints"
    PCR_MISMATCH = "pcr_mismatch"
    DEBUG_MODE = "debug_mode"
    STALE = "stale"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    NONCE_MISMATCH = "nonce_mismatch"
    PUBLIC_KEY_MISMATCH = "public_key_mismatch"
    USER_DATA_MISMATCH = "user_data_mismatch"


class AttestationError(Exception):
    """A document was rejected. `code` is stable across releases; `detail` is for people."""

    def __init__(self, reason: Reason, detail: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.code = f"{reason.value}:{field}" if field else reason.value
        self.detail = detail
        super().__init__(f"{self.code}: {detail}")


def malformed(field: str, detail: str) -> AttestationError:
    return AttestationError(Reason.MALFORMED, detail, field)
