"""Enclave registration: verify an enclave's attestation off-chain, sign an EIP-712 registration on-chain.

The verifier fetches `/attestation` with a fresh random nonce (so the document cannot be replayed), or is
handed a document made for a nonce it issued (verifier_service.py), checks it with the `attestation`
package (pinned root, expected PCRs, freshness, debug mode), and signs
EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash,
bytes32 encryptionKey) in the registry's domain (name "verinfer-registry", version "1", chainId,
verifyingContract). `encryptionKey` is the X25519 key the document's user_data binds after the manifest
digest (protocol.binding), or zero for a document that binds none: nothing can then be sealed to it on chain.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import Hash32
from web3 import Web3
from web3.contract import Contract

from attestation import AttestationError, Policy, VerifiedAttestation, verify
from protocol.binding import BindingError, split_user_data
from protocol.hashing import keccak256 as keccak
from protocol.images import image_id

from .chain import TxSender
from .errors import RelayError
from .http_client import HttpResponse, Limits, OutboundError, request_async, run_blocking

REGISTRATION_TYPEHASH = keccak(
    b"EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash,"
    b"bytes32 encryptionKey)"
)
NO_ENCRYPTION_KEY = bytes(32)
DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


class RegistrationError(RelayError):
    """The enclave could not be attested (unreachable, or its document failed verification)."""


@dataclass(frozen=True, slots=True)
class Registration:
    public_key: bytes
    image_id: bytes
    attestation_timestamp_ms: int
    user_data_hash: bytes
    encryption_key: bytes  # NO_ENCRYPTION_KEY when the document binds none
    signature: bytes

    @property
    def enclave(self) -> str:
        return Web3.to_checksum_address(keccak(self.public_key)[12:])

    def to_json(self) -> dict[str, Any]:
        return {
            "enclave": self.enclave,
            "publicKey": "0x" + self.public_key.hex(),
            "imageId": "0x" + self.image_id.hex(),
            "attestationTimestampMs": self.attestation_timestamp_ms,
            "userDataHash": "0x" + self.user_data_hash.hex(),
            "encryptionKey": "0x" + self.encryption_key.hex(),
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        return cls(
            bytes.fromhex(data["publicKey"][2:]),
            bytes.fromhex(data["imageId"][2:]),
            int(data["attestationTimestampMs"]),
            bytes.fromhex(data["userDataHash"][2:]),
            bytes.fromhex(data["encryptionKey"][2:]),
            bytes.fromhex(data["signature"][2:]),
        )


def registration_digest(
    *,
    chain_id: int,
    contract: str,
    public_key: bytes,
    image: bytes,
    timestamp_ms: int,
    user_data_hash: bytes,
    encryption_key: bytes,
) -> bytes:
    domain = keccak(
        DOMAIN_TYPEHASH
        + keccak(b"verinfer-registry")
        + keccak(b"1")
        + chain_id.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(Web3.to_checksum_address(contract)[2:])
    )
    struct = keccak(
        REGISTRATION_TYPEHASH
        + keccak(public_key)
        + image
        + timestamp_ms.to_bytes(32, "big")
        + user_data_hash
        + encryption_key
    )
    return keccak(b"\x19\x01" + domain + struct)


ATTESTATION_MAX_BYTES = 256 * 1024  # a GET /attestation answer is a few KiB
NONCE_BYTES = 32


def attestation_limits(deadline_s: float) -> Limits:
    return Limits(deadline_s=deadline_s, max_bytes=ATTESTATION_MAX_BYTES)


def document_from(value: Any, source: str) -> bytes:
    """The COSE_Sign1 bytes from a GET /attestation answer, or from the base64 `document` field alone."""
    if isinstance(value, dict):
        value = value.get("document")
    if not isinstance(value, str):
        raise RegistrationError(f"{source}: no base64 attestation document")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise RegistrationError(f"{source}: the attestation document is not base64: {exc}") from exc


def _document(response: HttpResponse, enclave_url: str) -> bytes:
    try:
        return document_from(response.raise_for_status().json(), f"the attestation of {enclave_url}")
    except OutboundError as exc:
        raise RegistrationError(f"cannot fetch an attestation from {enclave_url}: {exc}") from exc


def fetch_attestation(enclave_url: str, nonce: bytes, *, timeout: float = 10.0) -> bytes:
    """The enclave's document for `nonce` (GET {enclave_url}/attestation?nonce=hex), within bounds."""
    return run_blocking(fetch_attestation_async(enclave_url, nonce, timeout=timeout))


async def fetch_attestation_async(enclave_url: str, nonce: bytes, *, timeout: float = 10.0) -> bytes:
    """The enclave's document for `nonce`, for an event loop (the verifier service)."""
    try:
        response = await request_async(
            "GET",
            f"{enclave_url.rstrip('/')}/attestation",
            params={"nonce": nonce.hex()},
            limits=attestation_limits(timeout),
        )
    except OutboundError as exc:
        raise RegistrationError(f"cannot fetch an attestation from {enclave_url}: {exc}") from exc
    return _document(response, enclave_url)


def check_attestation(document: bytes, policy: Policy, nonce: bytes, source: str) -> VerifiedAttestation:
    """Verify a document that must carry `nonce` (ours, so it cannot be a replay) and bind an enclave key."""
    checked = dataclasses.replace(
        policy,
        max_age_s=policy.max_age_s if policy.max_age_s is not None else 60.0,
        expected_nonce=nonce,
    )
    try:
        result = verify(document, checked)
    except AttestationError as exc:
        raise RegistrationError(f"attestation of {source} rejected: {exc.code}: {exc.detail}") from exc
    if result.public_key is None or len(result.public_key) != 64:
        raise RegistrationError("the attestation does not bind a 64-byte enclave public key")
    encryption_key(result)
    return result


def encryption_key(attested: VerifiedAttestation) -> bytes:
    """The X25519 key the document's user_data binds (user_data[32:64]), or NO_ENCRYPTION_KEY for a
    document with the manifest digest alone; RegistrationError for user_data of any other size."""
    try:
        key = split_user_data(attested.user_data).encryption_key
    except BindingError as exc:
        raise RegistrationError(f"the attestation cannot be registered: {exc}") from exc
    return NO_ENCRYPTION_KEY if key is None else key


def attest_enclave(enclave_url: str, policy: Policy, *, timeout: float = 10.0) -> VerifiedAttestation:
    """Fetch a fresh document with our own nonce and verify it; the nonce makes replays useless.
    `timeout` is the total deadline of the fetch."""
    nonce = os.urandom(NONCE_BYTES)
    return check_attestation(
        fetch_attestation(enclave_url, nonce, timeout=timeout), policy, nonce, enclave_url
    )


def sign_registration(
    verifier: LocalAccount, attested: VerifiedAttestation, *, chain_id: int, contract: str
) -> Registration:
    assert attested.public_key is not None
    image = image_id(dict(attested.pcrs))
    user_data_hash = keccak(attested.user_data or b"")
    key = encryption_key(attested)
    digest = registration_digest(
        chain_id=chain_id,
        contract=contract,
        public_key=attested.public_key,
        image=image,
        timestamp_ms=attested.timestamp_ms,
        user_data_hash=user_data_hash,
        encryption_key=key,
    )
    signed = verifier.unsafe_sign_hash(Hash32(digest))
    signature = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes((signed.v,))
    return Registration(attested.public_key, image, attested.timestamp_ms, user_data_hash, key, signature)


def submit_registration(sender: TxSender, registry: Contract, registration: Registration) -> str:
    """Send registerEnclave; returns the enclave address. ChainError names the contract's custom error."""
    call = registry.functions.registerEnclave(
        registration.public_key,
        registration.image_id,
        registration.attestation_timestamp_ms,
        registration.user_data_hash,
        registration.encryption_key,
        registration.signature,
    )
    sender.transact(call)
    return registration.enclave
