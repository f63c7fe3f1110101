"""Enclave registration: verify an enclave's attestation off-chain, sign an EIP-712 registration on-chain.

The verifier fetches `/attestation` with a fresh random nonce (so the document cannot be replayed), checks it
with the `attestation` package (pinned root, expected PCRs, freshness, debug mode), and signs
EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash)
in the registry's domain (name "verinfer-registry", version "1", chainId, verifyingContract).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_typing import Hash32
from web3 import Web3
from web3.contract import Contract

from attestation import AttestationError, Policy, VerifiedAttestation, verify
from protocol.hashing import keccak256 as keccak
from protocol.images import image_id

from .chain import TxSender

REGISTRATION_TYPEHASH = keccak(
    b"EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash)"
)
DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


class RegistrationError(RuntimeError):
    """The enclave could not be attested (unreachable, or its document failed verification)."""


@dataclass(frozen=True, slots=True)
class Registration:
    public_key: bytes
    image_id: bytes
    attestation_timestamp_ms: int
    user_data_hash: bytes
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
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        return cls(
            bytes.fromhex(data["publicKey"][2:]),
            bytes.fromhex(data["imageId"][2:]),
            int(data["attestationTimestampMs"]),
            bytes.fromhex(data["userDataHash"][2:]),
            bytes.fromhex(data["signature"][2:]),
        )


def registration_digest(
    *, chain_id: int, contract: str, public_key: bytes, image: bytes, timestamp_ms: int, user_data_hash: bytes
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
        REGISTRATION_TYPEHASH + keccak(public_key) + image + timestamp_ms.to_bytes(32, "big") + user_data_hash
    )
    return keccak(b"\x19\x01" + domain + struct)


def attest_enclave(enclave_url: str, policy: Policy, *, timeout: float = 10.0) -> VerifiedAttestation:
    """Fetch a fresh document with our own nonce and verify it; the nonce makes replays useless."""
    nonce = os.urandom(32)
    try:
        response = httpx.get(f"{enclave_url}/attestation", params={"nonce": nonce.hex()}, timeout=timeout)
        response.raise_for_status()
        document = base64.b64decode(response.json()["document"])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise RegistrationError(f"cannot fetch an attestation from {enclave_url}: {exc}") from exc
    checked = Policy(
        root=policy.root,
        expected_pcrs=policy.expected_pcrs,
        max_age_s=policy.max_age_s if policy.max_age_s is not None else 60.0,
        expected_nonce=nonce,
        allow_debug=policy.allow_debug,
    )
    try:
        result = verify(document, checked)
    except AttestationError as exc:
        raise RegistrationError(f"attestation of {enclave_url} rejected: {exc.code}: {exc.detail}") from exc
    if result.public_key is None or len(result.public_key) != 64:
        raise RegistrationError("the attestation does not bind a 64-byte enclave public key")
    return result


def sign_registration(
    verifier: LocalAccount, attested: VerifiedAttestation, *, chain_id: int, contract: str
) -> Registration:
    assert attested.public_key is not None
    image = image_id(dict(attested.pcrs))
    user_data_hash = keccak(attested.user_data or b"")
    digest = registration_digest(
        chain_id=chain_id,
        contract=contract,
        public_key=attested.public_key,
        image=image,
        timestamp_ms=attested.timestamp_ms,
        user_data_hash=user_data_hash,
    )
    signed = verifier.unsafe_sign_hash(Hash32(digest))
    signature = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes((signed.v,))
    return Registration(attested.public_key, image, attested.timestamp_ms, user_data_hash, signature)


def submit_registration(sender: TxSender, registry: Contract, registration: Registration) -> str:
    """Send registerEnclave; returns the enclave address. ChainError names the contract's custom error."""
    call = registry.functions.registerEnclave(
        registration.public_key,
        registration.image_id,
        registration.attestation_timestamp_ms,
        registration.user_data_hash,
        registration.signature,
    )
    sender.transact(call)
    return registration.enclave
