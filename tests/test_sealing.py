"""protocol/sealing.py: the commitments of sealed receipts and the on-chain sealedInput/sealedOutput formats,
against the shared vectors (tests/vectors/sealing.json), an independent HPKE (pyhpke used directly), and
tampering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from protocol.hashing import keccak256
from protocol.hpke import AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305, HpkeError, SealingKey
from protocol.sealing import (
    SALT_HEADER,
    SALT_SIZE,
    SealedFormatError,
    commit_input,
    commit_output,
    open_input,
    open_output,
    seal_input,
    seal_output,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sealing.json").read_text())
AEADS = st.sampled_from([AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305])
WORDS = st.binary(min_size=32, max_size=32)
ENCLAVE = SealingKey.generate()
REQUESTER = SealingKey.generate()
OVERHEAD = 1 + 2 + 32 + 16  # version, aead id, enc, tag


def raw(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


# --- commitments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["commitments"], ids=lambda case: case["label"])
def test_commitments_match_the_vectors(case: dict[str, Any]) -> None:
    salt, digest = raw(case["salt"]), raw(case["hash"])
    assert commit_input(salt, digest) == raw(case["inputCommitment"])
    assert commit_output(salt, digest) == raw(case["outputCommitment"])


@given(salt=WORDS, digest=WORDS)
def test_commitments_are_the_documented_hashes(salt: bytes, digest: bytes) -> None:
    assert commit_input(salt, digest) == keccak256(b"verinfer.sealed.input.v1\x00" + salt + digest)
    assert commit_output(salt, digest) == keccak256(b"verinfer.sealed.output.v1\x00" + salt + digest)
    assert commit_input(salt, digest) != commit_output(salt, digest)  # domain-separated


@pytest.mark.parametrize(("salt", "digest"), [(bytes(31), bytes(32)), (bytes(32), bytes(33)), (b"", b"")])
def test_commitments_take_32_byte_words_only(salt: bytes, digest: bytes) -> None:
    for commit in (commit_input, commit_output):
        with pytest.raises(SealedFormatError, match="32 bytes"):
            commit(salt, digest)


def test_the_salt_header() -> None:
    assert SALT_HEADER == SALT_HEADER.lower() == "verinfer-input-salt" and SALT_SIZE == 32


# --- the sealed formats: vectors and an independent HPKE --------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["sealed"], ids=lambda case: case["label"])
def test_sealed_vectors_are_reproduced_and_open(case: dict[str, Any]) -> None:
    enclave = SealingKey.from_private_bytes(raw(VECTORS["enclavePrivateKey"]))
    requester = SealingKey.from_private_bytes(raw(VECTORS["requesterPrivateKey"]))
    assert enclave.public_key == raw(VECTORS["enclavePublicKey"])
    model_hash, sealed_input = raw(case["modelHash"]), raw(case["sealedInput"])
    assert (
        seal_input(
            enclave.public_key,
            model_hash,
            raw(case["input"]),
            case["aeadId"],
            ephemeral_private=raw(case["inputEphemeralPrivateKey"]),
        )
        == sealed_input
    )
    assert seal_output(
        requester.public_key,
        sealed_input,
        raw(case["output"]),
        case["aeadId"],
        ephemeral_private=raw(case["outputEphemeralPrivateKey"]),
    ) == raw(case["sealedOutput"])
    assert open_input(enclave, model_hash, sealed_input) == raw(case["input"])
    assert open_output(requester, sealed_input, raw(case["sealedOutput"])) == raw(case["output"])


def _independent_open(private: bytes, info: bytes, sealed: bytes) -> bytes:
    """The documented layout opened with pyhpke directly: version 1, u16 BE AEAD id, enc, ciphertext."""
    assert sealed[0] == 1
    aead = {1: AEADId.AES128_GCM, 3: AEADId.CHACHA20_POLY1305}[int.from_bytes(sealed[1:3], "big")]
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, aead)
    key = suite.kem.deserialize_private_key(private)
    return bytes(suite.create_recipient_context(sealed[3:35], key, info).open(sealed[35:]))


@pytest.mark.parametrize("case", VECTORS["sealed"], ids=lambda case: case["label"])
def test_the_format_is_the_documented_one(case: dict[str, Any]) -> None:
    sealed_input, sealed_output = raw(case["sealedInput"]), raw(case["sealedOutput"])
    request_info = b"verinfer.sealed.request.v1\x00" + raw(case["modelHash"])
    output_info = b"verinfer.sealed.output.v1\x00" + keccak256(sealed_input)
    assert sealed_input[1:3] == case["aeadId"].to_bytes(2, "big")
    assert _independent_open(raw(VECTORS["enclavePrivateKey"]), request_info, sealed_input) == raw(
        case["input"]
    )
    assert _independent_open(raw(VECTORS["requesterPrivateKey"]), output_info, sealed_output) == raw(
        case["output"]
    )


# --- round trips and refusals -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=2048), output=st.binary(max_size=512), model_hash=WORDS, aead=AEADS)
def test_round_trips(plaintext: bytes, output: bytes, model_hash: bytes, aead: int) -> None:
    sealed = seal_input(ENCLAVE.public_key, model_hash, plaintext, aead)
    assert len(sealed) == len(plaintext) + OVERHEAD and sealed[:3] == b"\x01" + aead.to_bytes(2, "big")
    assert open_input(ENCLAVE, model_hash, sealed) == plaintext
    answer = seal_output(REQUESTER.public_key, sealed, output, aead)
    assert open_output(REQUESTER, sealed, answer) == output
    assert seal_input(ENCLAVE.public_key, model_hash, plaintext, aead) != sealed  # a fresh ephemeral key


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=256), data=st.data(), aead=AEADS)
def test_any_altered_byte_is_refused(plaintext: bytes, data: st.DataObject, aead: int) -> None:
    model_hash = keccak256(b"model")
    sealed = bytearray(seal_input(ENCLAVE.public_key, model_hash, plaintext, aead))
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    sealed[index] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(HpkeError):
        open_input(ENCLAVE, model_hash, bytes(sealed))


def test_a_wrong_model_hash_or_key_is_refused() -> None:
    model_hash = keccak256(b"model")
    sealed = seal_input(ENCLAVE.public_key, model_hash, b"features")
    with pytest.raises(HpkeError) as wrong_model:
        open_input(ENCLAVE, keccak256(b"another model"), sealed)
    with pytest.raises(HpkeError) as wrong_key:
        open_input(SealingKey.generate(), model_hash, sealed)
    assert wrong_model.value.code == wrong_key.value.code == "decryption_failed"


def test_a_sealed_output_belongs_to_its_request() -> None:
    """An output spliced onto another request (another sealed input) does not open."""
    first = seal_input(ENCLAVE.public_key, bytes(32), b"first")
    second = seal_input(ENCLAVE.public_key, bytes(32), b"second")
    answer = seal_output(REQUESTER.public_key, first, b"output")
    with pytest.raises(HpkeError, match="open failed"):
        open_output(REQUESTER, second, answer)
    with pytest.raises(HpkeError):
        open_output(ENCLAVE, first, answer)  # for the requester's key only


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (lambda s: s[:50], "malformed", "at least 51 bytes"),
        (lambda s: b"", "malformed", "at least 51 bytes"),
        (lambda s: b"\x02" + s[1:], "malformed", "version 1"),
        (lambda s: s[:1] + b"\x00\x02" + s[3:], "unsupported_suite", "0x0002"),
        (lambda s: s[:1] + b"\x01\x03" + s[3:], "unsupported_suite", "0x0103"),
    ],
)
def test_malformed_sealed_inputs_say_why(change: Any, code: str, message: str) -> None:
    sealed = change(seal_input(ENCLAVE.public_key, bytes(32), b"x"))
    with pytest.raises(SealedFormatError, match=message) as info:
        open_input(ENCLAVE, bytes(32), sealed)
    assert info.value.code == code


def test_sealing_refuses_what_it_cannot_do() -> None:
    with pytest.raises(SealedFormatError) as suite:
        seal_input(ENCLAVE.public_key, bytes(32), b"x", aead_id=0x0002)
    assert suite.value.code == "unsupported_suite"
    with pytest.raises(SealedFormatError, match="32 bytes"):
        seal_input(ENCLAVE.public_key[:31], bytes(32), b"x")
    with pytest.raises(SealedFormatError, match="model hash must be 32 bytes"):
        seal_input(ENCLAVE.public_key, bytes(31), b"x")
