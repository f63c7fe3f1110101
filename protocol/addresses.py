"""Ethereum addresses of secp256k1 keys: how a receipt names the enclave that signed it."""

from __future__ import annotations

from functools import lru_cache

from .hashing import keccak256


def address_of(public_key64: bytes) -> bytes:
    """Ethereum address: the last 20 bytes of keccak256 of the uncompressed X || Y."""
    if len(public_key64) != 64:
        raise ValueError("public key must be the 64-byte uncompressed X || Y")
    return keccak256(public_key64)[12:]


@lru_cache(maxsize=1024)
def checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case hex (cached: the enclave address is on every receipt)."""
    plain = address.hex()
    digest = keccak256(plain.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(plain))
