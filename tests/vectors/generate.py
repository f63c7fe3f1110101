"""Regenerate the shared test vectors (tensors.json, receipts.json, onchain.json, sealing.json) used by Python
and Solidity.

Run: .venv/bin/python -m tests.vectors.generate. The vectors are committed; tests check the
implementation still reproduces them byte for byte, so a change to the encoding cannot go unnoticed.
The signing key below is a published test key: it signs nothing but these vectors, and the X25519 keys of
the sealing vectors are derived from labels: they seal nothing but these vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from coincurve import PrivateKey

from protocol.addresses import address_of, checksum_address
from protocol.hashing import keccak256
from protocol.hpke import AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305, SealingKey
from protocol.onchain import fulfilment_id, output_layout
from protocol.receipts import DOMAIN_SEPARATOR, RECEIPT_TYPEHASH, Receipt
from protocol.sealing import commit_input, commit_output, seal_input, seal_output
from protocol.tensors import encode_tensors

HERE = Path(__file__).resolve().parent
TEST_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")

TENSOR_CASES: list[tuple[str, list[tuple[str, np.ndarray]]]] = [
    ("iris-mlp input", [("features", np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))]),
    (
        "iris-mlp output",
        [
            ("probabilities", np.array([[0.75, 0.125, 0.125]], dtype=np.float32)),
            ("label", np.array([0], dtype=np.int64)),
        ],
    ),
    ("scalar int32", [("x", np.array(-2, dtype=np.int32))]),
    ("uint8 image 2x2", [("image", np.array([[0, 255], [16, 1]], dtype=np.uint8))]),
    ("float64 and bool", [("a", np.array([1.5, -0.0], dtype=np.float64)), ("b", np.array([True, False]))]),
]


def tensor_vectors() -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = []
    for label, tensors in TENSOR_CASES:
        encoded = encode_tensors(tensors)
        vectors.append(
            {
                "label": label,
                "tensors": [
                    {"name": n, "dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}
                    for n, a in tensors
                ],
                "encoding": "0x" + encoded.hex(),
                "keccak256": "0x" + keccak256(encoded).hex(),
            }
        )
    return vectors


def receipt_vectors() -> dict[str, object]:
    key = PrivateKey(TEST_KEY)
    address = address_of(key.public_key.format(compressed=False)[1:])
    cases = []
    for index, (label, tensors_in, tensors_out) in enumerate(
        [
            ("iris-mlp", TENSOR_CASES[0][1], TENSOR_CASES[1][1]),
            ("zero time", TENSOR_CASES[2][1], TENSOR_CASES[3][1]),
        ]
    ):
        receipt = Receipt(
            request_id=keccak256(f"request {index}".encode()),
            model_hash=keccak256(f"model {index}".encode()),
            input_hash=keccak256(encode_tensors(tensors_in)),
            output_hash=keccak256(encode_tensors(tensors_out)),
            timestamp_ms=0 if index else 1732406400123,
        )
        signature = key.sign_recoverable(receipt.digest(), hasher=None)
        cases.append(
            {
                "label": label,
                "requestId": "0x" + receipt.request_id.hex(),
                "modelHash": "0x" + receipt.model_hash.hex(),
                "inputHash": "0x" + receipt.input_hash.hex(),
                "outputHash": "0x" + receipt.output_hash.hex(),
                "timestampMs": receipt.timestamp_ms,
                "structHash": "0x" + receipt.struct_hash().hex(),
                "digest": "0x" + receipt.digest().hex(),
                "signature": "0x" + (signature[:64] + bytes((signature[64] + 27,))).hex(),
            }
        )
    return {
        "domainSeparator": "0x" + DOMAIN_SEPARATOR.hex(),
        "receiptTypehash": "0x" + RECEIPT_TYPEHASH.hex(),
        "signerPrivateKey": "0x" + TEST_KEY.hex(),
        "signer": checksum_address(address),
        "receipts": cases,
    }


# Output layouts: the served models' outputs (models/manifest.json) and edge cases of the format.
LAYOUT_CASES: list[tuple[str, list[tuple[str, np.ndarray]]]] = [
    ("iris-ols", [("petal_width", np.array([[1.8]], dtype=np.float32))]),
    TENSOR_CASES[1],  # iris-mlp: probabilities (float32), label (int64)
    (
        "mnist-lenet",
        [("logits", np.zeros((1, 10), dtype=np.float32)), ("digit", np.array([7], dtype=np.int64))],
    ),
    ("iris-mlp outputs reordered", [TENSOR_CASES[1][1][1], TENSOR_CASES[1][1][0]]),
    ("one-byte name, uint8", [("x", np.array([1, 2], dtype=np.uint8))]),
    ("255-byte name, bool", [("n" * 255, np.array([True]))]),
    ("utf-8 name, float64", [("résultat", np.array([0.5], dtype=np.float64))]),
]

FULFILMENT_CASES = [
    ("request 1, anvil account 2", keccak256(b"request 1"), "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
    ("zero request, zero address", bytes(32), "0x0000000000000000000000000000000000000000"),
    ("all ones", b"\xff" * 32, "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF"),
]


def onchain_vectors() -> dict[str, object]:
    """protocol/onchain.py's two rules, which InferenceVerifier.fulfilmentId and TensorCodec.layoutHash
    must reproduce: each layout comes with an encoding whose layout it is."""
    return {
        "layouts": [
            {
                "label": label,
                "outputs": [{"name": n, "dtype": str(a.dtype)} for n, a in tensors],
                "encoding": "0x" + encode_tensors(tensors).hex(),
                "layout": "0x" + output_layout((n, str(a.dtype)) for n, a in tensors).hex(),
            }
            for label, tensors in LAYOUT_CASES
        ],
        "fulfilmentIds": [
            {
                "label": label,
                "requestId": "0x" + request_id.hex(),
                "fulfiller": fulfiller,
                "fulfilmentId": "0x" + fulfilment_id(request_id, fulfiller).hex(),
            }
            for label, request_id, fulfiller in FULFILMENT_CASES
        ],
    }


COMMITMENT_CASES = [
    ("zero salt, zero hash", bytes(32), bytes(32)),
    ("all-ones salt", b"\xff" * 32, keccak256(b"hash")),
    ("iris-mlp input", keccak256(b"salt 1"), keccak256(encode_tensors(TENSOR_CASES[0][1]))),
]


def _x25519(label: str) -> bytes:
    """A vector's X25519 private key, derived from its label (any 32 bytes are a valid X25519 key)."""
    return keccak256(b"verinfer sealing vector " + label.encode())


def sealing_vectors() -> dict[str, object]:
    """protocol/sealing.py: commitments (deterministic), and sealedInput/sealedOutput with fixed ephemeral
    keys, so another implementation can check its bytes (and open ours with the published private keys)."""
    enclave, requester = (
        SealingKey.from_private_bytes(_x25519("enclave")),
        SealingKey.from_private_bytes(_x25519("requester")),
    )
    sealed = []
    for label, aead in (("ChaCha20-Poly1305", AEAD_CHACHA20_POLY1305), ("AES-128-GCM", AEAD_AES_128_GCM)):
        model_hash = keccak256(f"model {label}".encode())
        plaintext, output = encode_tensors(TENSOR_CASES[0][1]), encode_tensors(TENSOR_CASES[1][1])
        sealed_input = seal_input(
            enclave.public_key, model_hash, plaintext, aead, ephemeral_private=_x25519(f"input {label}")
        )
        sealed_output = seal_output(
            requester.public_key, sealed_input, output, aead, ephemeral_private=_x25519(f"output {label}")
        )
        sealed.append(
            {
                "label": label,
                "aeadId": aead,
                "modelHash": "0x" + model_hash.hex(),
                "input": "0x" + plaintext.hex(),
                "inputEphemeralPrivateKey": "0x" + _x25519(f"input {label}").hex(),
                "sealedInput": "0x" + sealed_input.hex(),
                "output": "0x" + output.hex(),
                "outputEphemeralPrivateKey": "0x" + _x25519(f"output {label}").hex(),
                "sealedOutput": "0x" + sealed_output.hex(),
            }
        )
    return {
        "commitments": [
            {
                "label": label,
                "salt": "0x" + salt.hex(),
                "hash": "0x" + digest.hex(),
                "inputCommitment": "0x" + commit_input(salt, digest).hex(),
                "outputCommitment": "0x" + commit_output(salt, digest).hex(),
            }
            for label, salt, digest in COMMITMENT_CASES
        ],
        "enclavePrivateKey": "0x" + _x25519("enclave").hex(),
        "enclavePublicKey": "0x" + enclave.public_key.hex(),
        "requesterPrivateKey": "0x" + _x25519("requester").hex(),
        "requesterPublicKey": "0x" + requester.public_key.hex(),
        "sealed": sealed,
    }


def main() -> None:
    (HERE / "tensors.json").write_text(json.dumps(tensor_vectors(), indent=2) + "\n")
    (HERE / "receipts.json").write_text(json.dumps(receipt_vectors(), indent=2) + "\n")
    (HERE / "onchain.json").write_text(json.dumps(onchain_vectors(), indent=2, ensure_ascii=False) + "\n")
    (HERE / "sealing.json").write_text(json.dumps(sealing_vectors(), indent=2) + "\n")
    print(f"wrote tensors.json, receipts.json, onchain.json and sealing.json in {HERE}")


if __name__ == "__main__":
    main()
