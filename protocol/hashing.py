"""Hash functions of the protocol. keccak256 is Ethereum's (pre-standard Keccak, not SHA3-256).

safe-pysha3's C implementation costs under 1 us per call; pycryptodome's cffi wrapper costs about 23 us,
and a receipt takes five of them.
"""

from __future__ import annotations

import hashlib

from sha3 import keccak_256


def keccak256(data: bytes) -> bytes:
    digest: bytes = keccak_256(data).digest()
    return digest


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
