"""protocol.hpke against the RFC 9180 Appendix A.1.1 and A.2.1 base-mode vectors, and its refusals."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest

from protocol.errors import ProtocolError
from protocol.hpke import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    SUPPORTED_AEADS,
    HpkeContext,
    HpkeError,
    SealingKey,
    aead_sizes,
    seal,
    sender_context,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hpke_rfc9180.json").read_text())["vectors"]
h = bytes.fromhex


def _advance(sender: HpkeContext, recipient: HpkeContext, count: int) -> None:
    """Move both contexts' sequence numbers on by `count` (each Seal/Open uses one)."""
    for _ in range(count):
        recipient.open(sender.seal(b"skip", b""), b"")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["section"] for v in VECTORS])
def test_rfc9180_base_vectors(vector: dict) -> None:
    key = SealingKey.from_private_bytes(h(vector["skRm"]))
    assert key.public_key == h(vector["pkRm"])
    info = h(vector["info"])
    aead_id = vector["aead_id"]
    assert aead_sizes(aead_id) == (len(h(vector["key"])), len(h(vector["base_nonce"])))

    enc, sender = sender_context(key.public_key, info, aead_id, ephemeral_private=h(vector["skEm"]))
    assert enc == h(vector["enc"]) == h(vector["pkEm"])
    recipient = key.recipient_context(enc, info, aead_id)

    seq = 0
    for case in vector["encryptions"]:
        _advance(sender, recipient, case["sequence_number"] - seq)
        ct = sender.seal(h(case["pt"]), h(case["aad"]))
        assert ct == h(case["ct"]), f"sequence number {case['sequence_number']}"
        assert recipient.open(ct, h(case["aad"])) == h(case["pt"])
        seq = case["sequence_number"] + 1

    for case in vector["exports"]:
        expected = h(case["exported_value"])
        assert sender.export(h(case["exporter_context"]), case["L"]) == expected
        assert recipient.export(h(case["exporter_context"]), case["L"]) == expected


@pytest.mark.parametrize("vector", VECTORS, ids=[v["section"] for v in VECTORS])
def test_single_shot_open_of_the_first_vector_encryption(vector: dict) -> None:
    key = SealingKey.from_private_bytes(h(vector["skRm"]))
    first = vector["encryptions"][0]
    assert first["sequence_number"] == 0
    pt = key.open(h(vector["enc"]), h(first["ct"]), h(vector["info"]), vector["aead_id"], h(first["aad"]))
    assert pt == h(first["pt"])


@pytest.mark.parametrize("aead_id", SUPPORTED_AEADS)
def test_single_shot_round_trip(aead_id: int) -> None:
    key = SealingKey.generate()
    enc, ct = seal(key.public_key, b"info", b"secret features", aead_id, b"aad")
    assert len(enc) == 32 and len(ct) == len(b"secret features") + 16
    assert key.open(enc, ct, b"info", aead_id, b"aad") == b"secret features"
    # fresh ephemeral key every time
    assert seal(key.public_key, b"info", b"secret features", aead_id)[0] != enc


@pytest.mark.parametrize("aead_id", SUPPORTED_AEADS)
def test_tampering_is_refused(aead_id: int) -> None:
    key = SealingKey.generate()
    enc, ct = seal(key.public_key, b"info", b"plaintext", aead_id)
    bad = [
        (enc, ct[:-1] + bytes([ct[-1] ^ 1]), b"info", aead_id, b""),  # tag
        (enc, bytes([ct[0] ^ 0x80]) + ct[1:], b"info", aead_id, b""),  # ciphertext
        (enc, ct, b"other info", aead_id, b""),  # info binds the context
        (enc, ct, b"info", aead_id, b"aad"),  # aad
        (bytes([enc[0] ^ 1]) + enc[1:], ct, b"info", aead_id, b""),  # encapsulated key
        (enc, ct[:10], b"info", aead_id, b""),  # truncated
        (enc, b"", b"info", aead_id, b""),
    ]
    for args in bad:
        with pytest.raises(HpkeError) as info:
            key.open(*args)
        assert info.value.code == "decryption_failed"
    other = SealingKey.generate()
    with pytest.raises(HpkeError, match="open failed") as info:
        other.open(enc, ct, b"info", aead_id)
    assert info.value.code == "decryption_failed"
    # the other AEAD: same key, wrong algorithm
    wrong = AEAD_CHACHA20_POLY1305 if aead_id == AEAD_AES_128_GCM else AEAD_AES_128_GCM
    with pytest.raises(HpkeError):
        key.open(enc, ct, b"info", wrong)


def test_low_order_encapsulated_key_is_refused() -> None:
    """An all-zero (low-order) point gives an all-zero DH output: RFC 9180 section 7.1.4 says abort."""
    key = SealingKey.generate()
    with pytest.raises(HpkeError) as info:
        key.open(bytes(32), bytes(32), b"", AEAD_AES_128_GCM)
    assert info.value.code == "decryption_failed"
    with pytest.raises(HpkeError) as info:
        seal(bytes(32), b"", b"x", AEAD_AES_128_GCM)
    assert info.value.code == "malformed"


@pytest.mark.parametrize("aead_id", [0x0000, 0x0002, 0xFFFF, 0x0004])
def test_unknown_aead_is_unsupported(aead_id: int) -> None:
    key = SealingKey.generate()
    for call in (
        lambda: aead_sizes(aead_id),
        lambda: seal(key.public_key, b"", b"x", aead_id),
        lambda: key.open(bytes(32), b"x" * 32, b"", aead_id),
        lambda: key.recipient_context(bytes(32), b"", aead_id),
    ):
        with pytest.raises(HpkeError) as info:
            call()
        assert info.value.code == "unsupported_suite"


def test_bad_lengths_are_malformed() -> None:
    key = SealingKey.generate()
    cases = [
        lambda: key.open(bytes(31), bytes(32), b"", AEAD_AES_128_GCM),
        lambda: key.open(bytes(33), bytes(32), b"", AEAD_AES_128_GCM),
        lambda: seal(bytes(31), b"", b"x", AEAD_AES_128_GCM),
        lambda: SealingKey.from_private_bytes(bytes(31)),
        lambda: sender_context(key.public_key, b"", AEAD_AES_128_GCM, ephemeral_private=b"short"),
    ]
    for call in cases:
        with pytest.raises(HpkeError) as info:
            call()
        assert info.value.code == "malformed"
        assert isinstance(info.value, ProtocolError)


def test_sealing_key_keeps_its_secret() -> None:
    raw = h(VECTORS[0]["skRm"])
    key = SealingKey.from_private_bytes(raw)
    assert repr(key) == f"SealingKey(public_key={key.public_key.hex()})"
    assert raw.hex() not in repr(key) and raw.hex() not in str(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    assert not hasattr(key, "__dict__")  # no stray attributes to leak through vars()


def test_contexts_do_not_pickle_or_show_secrets() -> None:
    key = SealingKey.generate()
    enc, sender = sender_context(key.public_key, b"", AEAD_AES_128_GCM)
    recipient = key.recipient_context(enc, b"", AEAD_AES_128_GCM)
    for context in (sender, recipient):
        assert "secret" in repr(context)
        with pytest.raises(TypeError):
            pickle.dumps(context)


def test_sender_cannot_open_and_recipient_cannot_seal() -> None:
    key = SealingKey.generate()
    enc, sender = sender_context(key.public_key, b"", AEAD_AES_128_GCM)
    recipient = key.recipient_context(enc, b"", AEAD_AES_128_GCM)
    with pytest.raises(HpkeError):
        sender.open(b"x" * 32)
    with pytest.raises(HpkeError):
        recipient.seal(b"x")


def test_error_messages_carry_no_key_material() -> None:
    vector = VECTORS[0]
    key = SealingKey.from_private_bytes(h(vector["skRm"]))
    with pytest.raises(HpkeError) as info:
        key.open(h(vector["enc"]), b"\x00" * 45, h(vector["info"]), AEAD_AES_128_GCM)
    text = str(info.value) + repr(info.value)
    for secret in ("skRm", "shared_secret", "key", "exporter_secret", "secret"):
        assert vector[secret] not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
