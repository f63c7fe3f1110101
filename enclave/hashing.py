"""Hash functions of the protocol. keccak256 is Ethereum's (pre-standard Keccak, not SHA3-256)."""

from __future__ import annotations

import hashlib

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    return _keccak.new(data=data, digest_bits=256).digest()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
