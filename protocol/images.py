"""The image id an admin approves on-chain: keccak256(PCR0 || PCR1 || PCR2)."""

from __future__ import annotations

from collections.abc import Mapping

from .hashing import keccak256

PCR_LENGTH = 48  # SHA384


def image_id(pcrs: Mapping[int, bytes]) -> bytes:
    """keccak256 of the concatenated PCR0, PCR1 and PCR2, each exactly 48 bytes (SHA384).

    The fixed length is what makes the concatenation unambiguous: with 32- or 64-byte PCRs allowed, a
    (32, 64, 48) triple and a (48, 48, 48) triple could hash the same 144 bytes."""
    parts = (pcrs[0], pcrs[1], pcrs[2])
    if any(len(part) != PCR_LENGTH for part in parts):
        raise ValueError(f"an image id takes PCR0, PCR1 and PCR2 of {PCR_LENGTH} bytes each (SHA384)")
    return keccak256(b"".join(parts))
