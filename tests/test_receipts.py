"""EIP-712 receipts: committed vectors, independent recovery with eth-account, tamper detection."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given
from hypothesis import strategies as st

from enclave.signer import EnclaveKey
from protocol.addresses import checksum_address
from protocol.receipts import (
    DOMAIN_SEPARATOR,
    RECEIPT_TYPEHASH,
    Receipt,
    ReceiptError,
    SignedReceipt,
    recover_signer,
    sign_receipt,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "receipts.json").read_text())


def typed_data(receipt: Receipt) -> dict:
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
            "InferenceReceipt": [
                {"name": "requestId", "type": "bytes32"},
                {"name": "modelHash", "type": "bytes32"},
                {"name": "inputHash", "type": "bytes32"},
                {"name": "outputHash", "type": "bytes32"},
                {"name": "timestampMs", "type": "uint64"},
            ],
        },
        "primaryType": "InferenceReceipt",
        "domain": {"name": "verinfer", "version": "1"},
        "message": {
            "requestId": receipt.request_id,
            "modelHash": receipt.model_hash,
            "inputHash": receipt.input_hash,
            "outputHash": receipt.output_hash,
            "timestampMs": receipt.timestamp_ms,
        },
    }


def random_receipt(timestamp: int = 1732406400123) -> Receipt:
    return Receipt(os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32), timestamp)


def test_constants_match_vectors() -> None:
    assert "0x" + DOMAIN_SEPARATOR.hex() == VECTORS["domainSeparator"]
    assert "0x" + RECEIPT_TYPEHASH.hex() == VECTORS["receiptTypehash"]


@pytest.mark.parametrize("vector", VECTORS["receipts"], ids=lambda v: v["label"])
def test_committed_vectors(vector: dict) -> None:
    receipt = Receipt(
        bytes.fromhex(vector["requestId"][2:]),
        bytes.fromhex(vector["modelHash"][2:]),
        bytes.fromhex(vector["inputHash"][2:]),
        bytes.fromhex(vector["outputHash"][2:]),
        vector["timestampMs"],
    )
    assert "0x" + receipt.struct_hash().hex() == vector["structHash"]
    assert "0x" + receipt.digest().hex() == vector["digest"]
    signer = recover_signer(receipt, bytes.fromhex(vector["signature"][2:]))
    assert (
        checksum_address(signer) == VECTORS["signer"] == Account.from_key(VECTORS["signerPrivateKey"]).address
    )


@given(st.integers(0, 2**64 - 1))
def test_eth_account_recovers_the_same_signer(timestamp: int) -> None:
    key = EnclaveKey()
    receipt = random_receipt(timestamp)
    signed = sign_receipt(key, receipt)
    recovered = Account.recover_message(
        encode_typed_data(full_message=typed_data(receipt)), signature=signed.signature
    )
    assert recovered == checksum_address(key.address) == signed.to_json()["enclave"]


def test_eth_account_signature_verifies_here() -> None:
    account = Account.create()
    receipt = random_receipt()
    signature = Account.sign_message(
        encode_typed_data(full_message=typed_data(receipt)), account.key
    ).signature
    assert checksum_address(recover_signer(receipt, bytes(signature))) == account.address


@pytest.mark.parametrize("field", ["request_id", "model_hash", "input_hash", "output_hash", "timestamp_ms"])
def test_any_tampered_field_changes_the_signer(field: str) -> None:
    key = EnclaveKey()
    receipt = random_receipt()
    signed = sign_receipt(key, receipt)
    value = getattr(receipt, field)
    tampered_value = value + 1 if isinstance(value, int) else bytes((value[0] ^ 1,)) + value[1:]
    tampered = Receipt(**{**{f: getattr(receipt, f) for f in receipt.__slots__}, field: tampered_value})
    with contextlib.suppress(ReceiptError):
        assert recover_signer(tampered, signed.signature) != key.address


def test_high_s_signature_is_rejected() -> None:
    key = EnclaveKey()
    receipt = random_receipt()
    signature = sign_receipt(key, receipt).signature
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (n - int.from_bytes(signature[32:64], "big")).to_bytes(32, "big")
    flipped_v = bytes((55 - signature[64],))  # 27 <-> 28
    with pytest.raises(ReceiptError, match="lower half"):
        recover_signer(receipt, signature[:32] + high_s + flipped_v)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x00" * 64 + b"\x1d", b"\x00" * 65 + b"\x1b"])
def test_malformed_signatures(signature: bytes) -> None:
    with pytest.raises(ReceiptError):
        recover_signer(random_receipt(), signature)


def test_json_round_trip() -> None:
    signed = sign_receipt(EnclaveKey(), random_receipt())
    assert SignedReceipt.from_json(signed.to_json()) == signed


@pytest.mark.parametrize(
    "mutation",
    [
        {"requestId": "0x1234"},
        {"signature": "nothex"},
        {"timestampMs": "5"},
        {"enclave": None},
    ],
)
def test_json_rejects_bad_fields(mutation: dict) -> None:
    data = {**sign_receipt(EnclaveKey(), random_receipt()).to_json(), **mutation}
    with pytest.raises(ReceiptError):
        SignedReceipt.from_json(data)


def test_receipt_requires_32_byte_fields() -> None:
    with pytest.raises(ReceiptError):
        Receipt(b"short", b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, 1)
    with pytest.raises(ReceiptError):
        Receipt(b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, 2**64)


def test_key_never_leaves() -> None:
    key = EnclaveKey()
    secret = key._key.secret
    assert secret.hex() not in repr(key) and secret.hex() not in str(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    assert not hasattr(key, "__dict__")
