"""Merkle trees over receipt digests, as InferenceVerifier.proveReceipt checks them.

Leaves are receipt digests (keccak256 of a 66-byte EIP-712 preimage); a parent is keccak256 of its two
children sorted ascending (64 bytes), so a leaf can never pass for an inner node. An odd node at the end of a
level moves up unchanged. Proofs are the sibling hashes from leaf to root.
"""

from __future__ import annotations

from collections.abc import Sequence

from .hashing import keccak256


def _parent(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a < b else b + a)


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    tree = [list(leaves)]
    while len(tree[-1]) > 1:
        level = tree[-1]
        tree.append(
            [
                _parent(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                for i in range(0, len(level), 2)
            ]
        )
    return tree


def root(leaves: Sequence[bytes]) -> bytes:
    return levels(leaves)[-1][0]


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    siblings = []
    for level in levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            siblings.append(level[sibling])
        index //= 2
    return siblings


def verify(proof_: Sequence[bytes], root_: bytes, leaf: bytes) -> bool:
    node = leaf
    for sibling in proof_:
        node = _parent(node, sibling)
    return node == root_
