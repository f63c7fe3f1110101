"""Sealed inference (docs/PROTOCOL.md): input/output commitments and the on-chain sealed formats.

Commitments, for receipts of sealed requests (a low-entropy input cannot be guessed from a public receipt
without the salt, which only the client and the enclave know):

    inputHash  = keccak256("verinfer.sealed.input.v1"  || 0x00 || salt (32) || plainInputHash (32))
    outputHash = keccak256("verinfer.sealed.output.v1" || 0x00 || salt (32) || plainOutputHash (32))

On-chain sealed requests are single-shot HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256):

    sealedInput  = 0x01 || u16 BE aeadId || enc (32) || Seal(pkEnclave, info, aad="", inputEncoding)
        info     = "verinfer.sealed.request.v1" || 0x00 || modelHash (32)
    sealedOutput = 0x01 || u16 BE aeadId || enc (32) || Seal(outputKey, info, aad="", outputEncoding)
        info     = "verinfer.sealed.output.v1" || 0x00 || keccak256(sealedInput)

The info strings bind a sealed input to its model and a sealed output to the very request it answers, so
neither can be replayed against another model or spliced onto another request.
"""

from __future__ import annotations

from .hashing import keccak256
from .hpke import (
    AEAD_CHACHA20_POLY1305,
    ENC_SIZE,
    PUBLIC_KEY_SIZE,
    SUPPORTED_AEADS,
    TAG_SIZE,
    HpkeError,
    SealingKey,
    sender_context,
)

SALT_HEADER = "verinfer-input-salt"
SALT_SIZE = 32
INPUT_COMMITMENT_DOMAIN = b"verinfer.sealed.input.v1\x00"
OUTPUT_COMMITMENT_DOMAIN = b"verinfer.sealed.output.v1\x00"

SEALED_VERSION = 1
REQUEST_INFO = b"verinfer.sealed.request.v1\x00"
OUTPUT_INFO = b"verinfer.sealed.output.v1\x00"
HEADER_SIZE = 1 + 2 + ENC_SIZE  # version || aeadId || enc
MIN_SEALED_SIZE = HEADER_SIZE + TAG_SIZE  # an empty plaintext still carries the AEAD tag

__all__ = [
    "INPUT_COMMITMENT_DOMAIN",
    "OUTPUT_COMMITMENT_DOMAIN",
    "OUTPUT_INFO",
    "REQUEST_INFO",
    "SALT_HEADER",
    "SALT_SIZE",
    "SEALED_VERSION",
    "SealedFormatError",
    "commit_input",
    "commit_output",
    "open_input",
    "open_output",
    "seal_input",
    "seal_output",
]


class SealedFormatError(HpkeError):
    """Bytes that are not a sealed message of this protocol (wrong version, suite or size). A ciphertext
    that does not open is an HpkeError("decryption_failed"): catch HpkeError for both."""


# --- commitments ------------------------------------------------------------------------------------------


def _word(value: bytes, name: str) -> bytes:
    if len(value) != 32:
        raise SealedFormatError("malformed", f"the {name} must be 32 bytes, got {len(value)}")
    return value


def commit_input(salt: bytes, input_hash: bytes) -> bytes:
    """The receipt's inputHash for a sealed request whose clear inputHash would be `input_hash`."""
    return keccak256(INPUT_COMMITMENT_DOMAIN + _word(salt, "salt") + _word(input_hash, "input hash"))


def commit_output(salt: bytes, output_hash: bytes) -> bytes:
    """The receipt's outputHash for a sealed request whose clear outputHash would be `output_hash`."""
    return keccak256(OUTPUT_COMMITMENT_DOMAIN + _word(salt, "salt") + _word(output_hash, "output hash"))


# --- the sealed on-chain formats -------------------------------------------------------------------------


def _seal(
    public_key: bytes, info: bytes, plaintext: bytes, aead_id: int, ephemeral_private: bytes | None
) -> bytes:
    if aead_id not in SUPPORTED_AEADS:
        raise SealedFormatError("unsupported_suite", f"unsupported HPKE AEAD id 0x{aead_id:04x}")
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise SealedFormatError(
            "malformed", f"an X25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}"
        )
    enc, context = sender_context(public_key, info, aead_id, ephemeral_private=ephemeral_private)
    return bytes((SEALED_VERSION,)) + aead_id.to_bytes(2, "big") + enc + context.seal(plaintext)


def _open(key: SealingKey, info: bytes, sealed: bytes, what: str) -> bytes:
    if len(sealed) < MIN_SEALED_SIZE:
        raise SealedFormatError(
            "malformed", f"a sealed {what} is at least {MIN_SEALED_SIZE} bytes, got {len(sealed)}"
        )
    if sealed[0] != SEALED_VERSION:
        raise SealedFormatError(
            "malformed", f"a sealed {what} starts with version {SEALED_VERSION}, not {sealed[0]}"
        )
    aead_id = int.from_bytes(sealed[1:3], "big")
    if aead_id not in SUPPORTED_AEADS:
        raise SealedFormatError("unsupported_suite", f"the sealed {what} uses HPKE AEAD id 0x{aead_id:04x}")
    return key.open(sealed[3:HEADER_SIZE], sealed[HEADER_SIZE:], info, aead_id)


def _request_info(model_hash: bytes) -> bytes:
    return REQUEST_INFO + _word(model_hash, "model hash")


def _output_info(sealed_input: bytes) -> bytes:
    return OUTPUT_INFO + keccak256(sealed_input)


def seal_input(
    enclave_key: bytes,
    model_hash: bytes,
    encoding: bytes,
    aead_id: int = AEAD_CHACHA20_POLY1305,
    *,
    ephemeral_private: bytes | None = None,
) -> bytes:
    """sealedInput: the canonical input `encoding` sealed to the enclave's attested X25519 key for
    `model_hash`. `ephemeral_private` fixes the HPKE ephemeral key, for published vectors only."""
    return _seal(enclave_key, _request_info(model_hash), encoding, aead_id, ephemeral_private)


def open_input(key: SealingKey, model_hash: bytes, sealed: bytes) -> bytes:
    """The input encoding inside `sealed`; HpkeError if it is malformed, was sealed to another key or
    for another model, or was altered."""
    return _open(key, _request_info(model_hash), sealed, "input")


def seal_output(
    output_key: bytes,
    sealed_input: bytes,
    encoding: bytes,
    aead_id: int = AEAD_CHACHA20_POLY1305,
    *,
    ephemeral_private: bytes | None = None,
) -> bytes:
    """sealedOutput: the output `encoding` sealed to the requester's `output_key`, bound to the request's
    `sealed_input`. `ephemeral_private` fixes the HPKE ephemeral key, for published vectors only."""
    return _seal(output_key, _output_info(sealed_input), encoding, aead_id, ephemeral_private)


def open_output(key: SealingKey, sealed_input: bytes, sealed: bytes) -> bytes:
    """The output encoding inside `sealed` (the requester's side); HpkeError if it is malformed, for
    another key or another request, or altered."""
    return _open(key, _output_info(sealed_input), sealed, "output")
