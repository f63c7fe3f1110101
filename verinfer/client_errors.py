"""The errors of verinfer.client: what failed to verify (VerificationError and its subclasses) and what the
server refused (ServerError), in one module so that every part of the client raises the same types."""

from __future__ import annotations

import orjson

from .verify import VerificationReport


class VerificationError(Exception):
    """The enclave or its answer did not verify: nothing unverified is ever returned to the caller.

    `report` is the offline verifier's report when one was made (each check with its detail)."""

    def __init__(self, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class AttestationError(VerificationError):
    """The attestation is not of a trusted, pinned enclave: bad chain or signature, a PCR or image id that
    is not pinned, no enclave key, or a manifest that is not the attested one. `code` is the reason
    (attestation.errors.Reason values, or image_mismatch, no_public_key, manifest_mismatch)."""

    def __init__(self, code: str, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(f"{code}: {message}", report)
        self.code = code


class StaleNonceError(AttestationError):
    """The document does not carry the nonce this client just sent: a replayed (or cached) attestation,
    which proves nothing about the enclave answering now."""

    def __init__(self, message: str) -> None:
        super().__init__("nonce_mismatch", message)


class ReceiptError(VerificationError):
    """The answer carries no usable receipt, or a check could not be made."""


class ForgedReceiptError(ReceiptError):
    """The receipt does not match the answer: bad signature, or a hash that does not recompute from the
    outputs, the request sent, or the attested model."""


class UnknownSignerError(ReceiptError):
    """The receipt is signed by a key that even a fresh attestation does not bind."""


class ServerError(Exception):
    """The server refused the request (an HTTP error status): nothing was signed, so nothing to verify."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class KeyChanged(Exception):
    """Internal: the receipt names another enclave than the cached attestation (`signer`, 0x-hex, when the
    receipt names one): attest that enclave once (behind a load balancer, GET /attestation?signer=)."""

    def __init__(self, detail: str, signer: str | None = None) -> None:
        super().__init__(detail)
        self.signer = signer


def server_error(status: int, content: bytes) -> ServerError:
    """A ServerError from any of the server's three error shapes (protocol/edge.py), or the raw text."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ServerError(status, "http_error", content[:200].decode(errors="replace"))
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # OpenAI: {"error": {"message", "code", ...}}
            return ServerError(status, str(error.get("code") or error.get("type")), str(error.get("message")))
        if "code" in body:  # V2 {"error": message, "code"} or {"code", "message"}
            return ServerError(status, str(body["code"]), str(body.get("message", error)))
    return ServerError(status, "http_error", content[:200].decode(errors="replace"))
