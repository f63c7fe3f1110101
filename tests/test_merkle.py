"""Merkle batches: Python trees and proofs agree with themselves and with the enclave's signed roots."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import merkle
from protocol.receipts import SignedReceipt, batch_digest, recover_address
from verinfer.processes import bearer

from .conftest import BATCH_TOKEN

leaves = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


@given(leaves, st.data())
def test_every_leaf_proves(items: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(items) - 1))
    root = merkle.root(items)
    assert merkle.verify(merkle.proof(items, index), root, items[index])


@given(leaves)
def test_a_foreign_leaf_does_not_prove(items: list[bytes]) -> None:
    root = merkle.root(items)
    assert not merkle.verify(merkle.proof(items, 0), root, os.urandom(32))


def test_single_leaf_is_its_own_root() -> None:
    leaf = os.urandom(32)
    assert merkle.root([leaf]) == leaf and merkle.proof([leaf], 0) == []


def test_empty_tree() -> None:
    with pytest.raises(ValueError):
        merkle.root([])


def test_enclave_signs_batches_of_its_receipts(server: str) -> None:
    for _ in range(5):
        httpx.post(f"{server}/infer", json={"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]})
    batch = httpx.post(
        f"{server}/receipts/batch", headers=bearer(BATCH_TOKEN), json={"from": 0, "max": 1000}
    ).json()
    assert batch["count"] >= 5 and batch["next"] == batch["count"]
    receipts = [SignedReceipt.from_json(r) for r in batch["receipts"]]
    digests = [r.receipt.digest() for r in receipts]
    root = bytes.fromhex(batch["root"][2:])
    assert merkle.root(digests) == root
    signer = recover_address(batch_digest(root, batch["count"]), bytes.fromhex(batch["signature"][2:]))
    assert all(r.enclave == signer for r in receipts)
    empty = httpx.post(
        f"{server}/receipts/batch",
        headers=bearer(BATCH_TOKEN),
        json={"from": batch["next"] + 10_000, "max": 5},
    ).json()
    assert empty["count"] == 0


@pytest.mark.parametrize("body", [{"from": -1}, {"from": 0, "max": 0}, {"from": "0"}, []])
def test_bad_batch_requests(server: str, body: object) -> None:
    response = httpx.post(f"{server}/receipts/batch", headers=bearer(BATCH_TOKEN), json=body)
    assert response.status_code == 400 and response.json()["code"] == "invalid_batch"
