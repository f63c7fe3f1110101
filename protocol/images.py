"""The image id an admin approves on-chain: keccak256(PCR0 || PCR1 || PCR2)."""

from __future__ import annotations

from collections.abc import Mapping

from .hashing import keccak256


def image_id(pcrs: Mapping[int, bytes]) -> bytes:
    """keccak256 of the concatenated PCR0, PCR1 and PCR2 (48 bytes each on Nitro)."""
    return keccak256(pcrs[0] + pcrs[1] + pcrs[2])
