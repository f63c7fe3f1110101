"""Certificate constraints on chains that link correctly: path length, CA flags, key usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from attestation import AttestationError, TrustedRoot
from attestation.chain import verify_chain
from attestation.sim_pki import _CA_USAGE, _LEAF_USAGE, _Authority, _issue, _name

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def authority(
    name: str, issuer: _Authority | None, path_length: int | None, *, curve: ec.EllipticCurve | None = None
) -> _Authority:
    key = ec.generate_private_key(curve or ec.SECP384R1())
    cert = _issue(
        _name(name),
        key,
        issuer,
        NOW - timedelta(days=1),
        timedelta(days=30),
        ca=True,
        path_length=path_length,
        usage=_CA_USAGE,
    )
    return _Authority(key, cert)


def leaf(
    issuer: _Authority,
    *,
    usage: x509.KeyUsage = _LEAF_USAGE,
    ca: bool = False,
    curve: ec.EllipticCurve | None = None,
) -> bytes:
    key = ec.generate_private_key(curve or ec.SECP384R1())
    cert = _issue(
        _name("leaf"),
        key,
        issuer,
        NOW - timedelta(hours=1),
        timedelta(hours=3),
        ca=ca,
        path_length=None,
        usage=usage,
        usage_critical=False,
        key_ids=False,
    )
    return cert.public_bytes(Encoding.DER)


def code(certificate: bytes, cas: list[_Authority]) -> str:
    root = TrustedRoot(cas[0].der, "test root")
    with pytest.raises(AttestationError) as info:
        verify_chain(certificate, tuple(ca.der for ca in cas), root, NOW)
    return info.value.code


def test_well_formed_chain_passes() -> None:
    root = authority("root", None, None)
    regional = authority("regional", root, 2)
    zonal = authority("zonal", regional, 1)
    instance = authority("instance", zonal, 0)
    chain = verify_chain(
        leaf(instance), (root.der, regional.der, zonal.der, instance.der), TrustedRoot(root.der, "r"), NOW
    )
    assert [s.split(",")[0] for s in chain.subjects] == [
        "CN=root",
        "CN=regional",
        "CN=zonal",
        "CN=instance",
        "CN=leaf",
    ]


def test_path_length_exceeded() -> None:
    root = authority("root", None, None)
    tight = authority("tight", root, 0)
    below = authority("below", tight, None)
    assert code(leaf(below), [root, tight, below]) == "cert_constraints"


def test_leaf_that_is_a_ca() -> None:
    root = authority("root", None, None)
    assert code(leaf(root, ca=True), [root]) == "cert_constraints"


def test_leaf_without_digital_signature() -> None:
    root = authority("root", None, None)
    usage = x509.KeyUsage(False, True, False, False, False, False, False, False, False)
    assert code(leaf(root, usage=usage), [root]) == "cert_constraints"


def test_leaf_on_the_wrong_curve() -> None:
    root = authority("root", None, None)
    assert code(leaf(root, curve=ec.SECP256R1()), [root]) == "cert_constraints"


def test_non_ca_in_the_bundle() -> None:
    root = authority("root", None, None)
    key = ec.generate_private_key(ec.SECP384R1())
    not_ca = _Authority(
        key,
        _issue(
            _name("plain"),
            key,
            root,
            NOW - timedelta(days=1),
            timedelta(days=3),
            ca=False,
            path_length=None,
            usage=_CA_USAGE,
        ),
    )
    assert code(leaf(not_ca), [root, not_ca]) == "cert_constraints"


def test_sha256_signature_is_not_accepted() -> None:
    root = authority("root", None, None)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("leaf"))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(_LEAF_USAGE, critical=False)
        .sign(root.key, hashes.SHA256())
    )
    assert code(cert.public_bytes(Encoding.DER), [root]) == "chain_broken"


def test_signed_by_a_different_key_with_the_same_name() -> None:
    root = authority("root", None, None)
    impostor = authority("root", None, None)
    assert code(leaf(impostor), [root]) == "chain_broken"
