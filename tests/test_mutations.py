"""Mutations of a real hardware document, each rejected with its own reason code."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from cryptography import x509

from attestation import AttestationError, Policy, decode, verify
from attestation.cose import encode_sign1

from .conftest import BASE_SAMPLE, document_time

ORIGINAL = BASE_SAMPLE.read_bytes()
SIGNED = decode(ORIGINAL)
AT = document_time(ORIGINAL)


def rejection(data: bytes, **kwargs: object) -> str:
    at = kwargs.pop("at", AT)
    with pytest.raises(AttestationError) as info:
        verify(data, Policy(**kwargs), at=at)  # type: ignore[arg-type]
    return info.value.code


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes((data[offset] ^ 0x01,)) + data[offset + 1 :]


def with_cabundle(cabundle: tuple[bytes, ...]) -> bytes:
    doc = dataclasses.replace(SIGNED.document, cabundle=cabundle)
    return encode_sign1(SIGNED.cose.protected, doc.encode_payload(), SIGNED.cose.signature)


def test_the_base_document_verifies() -> None:
    verify(ORIGINAL, Policy(), at=AT)


def test_base_document_is_encoded_like_our_encoder() -> None:
    # Our encoder reproduces hardware's bytes exactly, so re-encoded mutations differ only where intended.
    doc = SIGNED.document
    assert encode_sign1(SIGNED.cose.protected, doc.encode_payload(), SIGNED.cose.signature) == ORIGINAL


def test_flipped_payload_byte_breaks_the_signature() -> None:
    offset = ORIGINAL.index(SIGNED.document.pcrs[0]) + 10
    assert rejection(flip(ORIGINAL, offset)) == "bad_signature"


def test_flipped_public_key_byte_breaks_the_signature() -> None:
    assert SIGNED.document.public_key is not None
    offset = ORIGINAL.index(SIGNED.document.public_key) + 3
    assert rejection(flip(ORIGINAL, offset)) == "bad_signature"


def test_flipped_signature_byte() -> None:
    assert rejection(flip(ORIGINAL, len(ORIGINAL) - 5)) == "bad_signature"


def test_flipped_protected_header_algorithm_byte() -> None:
    # a1 01 38 22 -> a1 01 38 23: alg -36 (ES512)
    assert ORIGINAL[2:6] == b"\xa1\x01\x38\x22"
    assert rejection(flip(ORIGINAL, 5)) == "unsupported_algorithm"


def test_flipped_protected_header_map_byte() -> None:
    # a1 -> a0: an empty map, no algorithm
    assert rejection(flip(ORIGINAL, 2)) == "malformed:protected"


def test_algorithm_es256() -> None:
    forged = encode_sign1(b"\xa1\x01\x26", SIGNED.cose.payload, SIGNED.cose.signature)
    assert rejection(forged) == "unsupported_algorithm"


def test_cabundle_reversed() -> None:
    assert rejection(with_cabundle(tuple(reversed(SIGNED.document.cabundle)))) == "root_not_trusted"


def test_cabundle_intermediates_swapped() -> None:
    root, regional, zonal, instance = SIGNED.document.cabundle
    assert rejection(with_cabundle((root, zonal, regional, instance))) == "chain_broken"


def test_root_dropped() -> None:
    assert rejection(with_cabundle(SIGNED.document.cabundle[1:])) == "root_not_trusted"


def test_repeated_intermediate_breaks_the_chain() -> None:
    root, regional, zonal, instance = SIGNED.document.cabundle
    assert rejection(with_cabundle((root, regional, zonal, zonal, instance))) == "chain_broken"


def test_ca_certificate_as_leaf() -> None:
    root, regional, zonal, instance = SIGNED.document.cabundle
    doc = dataclasses.replace(SIGNED.document, certificate=instance, cabundle=(root, regional, zonal))
    forged = encode_sign1(SIGNED.cose.protected, doc.encode_payload(), SIGNED.cose.signature)
    assert rejection(forged) == "cert_constraints"


def test_one_second_after_the_leaf_expires() -> None:
    leaf = x509.load_der_x509_certificate(SIGNED.document.certificate)
    assert rejection(ORIGINAL, at=leaf.not_valid_after_utc + timedelta(seconds=1)) == "cert_expired"
    verify(ORIGINAL, Policy(), at=leaf.not_valid_after_utc)


def test_before_the_leaf_is_valid() -> None:
    leaf = x509.load_der_x509_certificate(SIGNED.document.certificate)
    assert rejection(ORIGINAL, at=leaf.not_valid_before_utc - timedelta(seconds=1)) == "cert_not_yet_valid"


def test_tag_18_is_accepted() -> None:
    verify(b"\xd2" + ORIGINAL, Policy(), at=AT)


def test_other_tags_are_rejected() -> None:
    assert rejection(b"\xd1" + ORIGINAL) == "malformed:cose"


def test_duplicate_payload_key_is_rejected() -> None:
    # Append a second "nonce" entry: map(9) -> map(10) with a duplicate key. A lax decoder would keep one.
    payload = SIGNED.cose.payload
    assert payload[0] == 0xA9
    forged_payload = b"\xaa" + payload[1:] + b"\x65nonce\x41\x00"
    forged = encode_sign1(SIGNED.cose.protected, forged_payload, SIGNED.cose.signature)
    assert rejection(forged) == "malformed:payload"


def test_unknown_payload_field_is_rejected() -> None:
    payload = SIGNED.cose.payload
    forged_payload = b"\xaa" + payload[1:] + b"\x65extra\x41\x00"
    assert rejection(encode_sign1(SIGNED.cose.protected, forged_payload, SIGNED.cose.signature)) == (
        "malformed:payload"
    )


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("digest", "SHA256", "malformed:digest"),
        ("module_id", "", "malformed:module_id"),
        ("timestamp", -1, "malformed:timestamp"),
        ("timestamp", True, "malformed:timestamp"),
        ("pcrs", {}, "malformed:pcrs"),
        ("pcrs", {0: b"\x00" * 47}, "malformed:pcrs"),
        # 32/64-byte PCRs under a SHA384 digest: keccak(PCR0 || PCR1 || PCR2) would be ambiguous (issue 11)
        ("pcrs", {0: b"\x00" * 32, 1: b"\x00" * 64, 2: b"\x00" * 48}, "malformed:pcrs"),
        ("pcrs", {0: b"\x00" * 64}, "malformed:pcrs"),
        ("pcrs", {32: b"\x00" * 48}, "malformed:pcrs"),
        ("certificate", "text", "malformed:certificate"),
        ("certificate", b"\x30\x00", "malformed:certificate"),
        ("cabundle", [], "malformed:cabundle"),
        ("public_key", b"\x00" * 1025, "malformed:public_key"),
        ("user_data", 7, "malformed:user_data"),
        ("nonce", [b"x"], "malformed:nonce"),
    ],
)
def test_field_types_and_sizes(field: str, value: object, code: str) -> None:
    import cbor2

    from attestation import cbor

    fields = cbor.loads(SIGNED.cose.payload)
    fields[field] = value
    forged = encode_sign1(SIGNED.cose.protected, cbor2.dumps(fields), SIGNED.cose.signature)
    assert rejection(forged) == code


def test_missing_required_field() -> None:
    import cbor2

    from attestation import cbor

    fields = cbor.loads(SIGNED.cose.payload)
    del fields["certificate"]
    forged = encode_sign1(SIGNED.cose.protected, cbor2.dumps(fields), SIGNED.cose.signature)
    assert rejection(forged) == "malformed:certificate"


def test_short_signature() -> None:
    forged = encode_sign1(SIGNED.cose.protected, SIGNED.cose.payload, SIGNED.cose.signature[:64])
    assert rejection(forged) == "malformed:signature"


def test_unparsable_subject_in_the_leaf_is_malformed_not_a_crash() -> None:
    # Regression (found by test_properties): cryptography decodes names lazily, so a bad tag inside the
    # leaf's subject used to escape as ValueError while an error message was being built.
    leaf = bytearray(SIGNED.document.certificate)
    position = leaf.rindex(b"Amazon") - 2  # the subject's O= value: tag, length, "Amazon"
    assert leaf[position] in (0x0C, 0x13)
    leaf[position] = 0x0D
    doc = dataclasses.replace(SIGNED.document, certificate=bytes(leaf))
    forged = encode_sign1(SIGNED.cose.protected, doc.encode_payload(), SIGNED.cose.signature)
    assert rejection(forged) == "malformed:certificate"


def test_bad_certificate_version_is_malformed() -> None:
    # Regression: cryptography raises InvalidVersion, which is not a ValueError.
    root, regional, zonal, instance = SIGNED.document.cabundle
    cert = bytearray(zonal)
    position = cert.index(b"\xa0\x03\x02\x01\x02") + 4  # [0] EXPLICIT Version INTEGER 2 (v3)
    cert[position] = 0x38
    assert rejection(with_cabundle((root, regional, bytes(cert), instance))) == "malformed:cabundle"
