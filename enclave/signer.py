"""The enclave's secp256k1 key: created in memory at boot, never serialised, logged or returned."""

from __future__ import annotations

from typing import Any

from coincurve import PrivateKey

from protocol.addresses import address_of, checksum_address


class EnclaveKey:
    """Signs 32-byte digests. Exposes only public material; the private scalar stays in this object."""

    __slots__ = ("_key", "address", "public_key64")

    def __init__(self) -> None:
        self._key = PrivateKey()
        self.public_key64: bytes = self._key.public_key.format(compressed=False)[1:]
        self.address: bytes = address_of(self.public_key64)

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r || s || v (v = 27 or 28), low-s, as ecrecover expects."""
        signature = self._key.sign_recoverable(digest, hasher=None)
        return signature[:64] + bytes((signature[64] + 27,))

    def __repr__(self) -> str:
        return f"EnclaveKey(address={checksum_address(self.address)})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("the enclave key cannot be pickled or copied out of the process")
