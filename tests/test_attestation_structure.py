"""Certificate structure checks (pyca style), size bounds, positions in rejections, and NSM error codes.

Hostile certificates are built by re-signing the simulator PKI's own certificates with their issuer's key
after editing the to-be-signed bytes, so every chain link except the edited property stays valid: a test
fails only because of the one defect it plants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ObjectIdentifier

from attestation import AttestationError, Policy, TrustedRoot, decode, verify
from attestation import chain as chain_module
from attestation.chain import verify_chain
from attestation.cose import ES384_PROTECTED, MAX_DOCUMENT, encode_sign1, sig_structure
from attestation.document import MAX_CABUNDLE, AttestationDocument
from attestation.nsm import NsmClient, NsmError, NsmErrorCode
from attestation.nsm.client import decode_response
from attestation.nsm.nitro import NitroTransport
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import _CA_USAGE, _LEAF_USAGE, SimulatorPki, _Authority, _issue, _name

from .conftest import BASE_SAMPLE, VALID, document_time

NOW = datetime.now(UTC)
MODULE_ID = "i-structure-enc0123456789abcdef"
ECDSA_SHA384_ALGORITHM = bytes.fromhex("300a06082a8648ce3d040303")
REAL = BASE_SAMPLE.read_bytes()
REAL_SIGNED = decode(REAL)
REAL_AT = document_time(REAL)


# -- DER and re-signing helpers ------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        head = bytes((length,))
    else:
        raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
        head = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + head + content


def children(der: bytes) -> list[bytes]:
    """The TLVs inside one DER constructed value (definite lengths only, as DER requires)."""
    assert der[1] & 0x80 == 0 or der[1] in (0x81, 0x82)
    start = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    items, position = [], start
    while position < len(der):
        length, header = der[position + 1], 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(der[position + 2 : position + 2 + count], "big")
            header += count
        items.append(der[position : position + header + length])
        position += header + length
    return items


def sign_tbs(tbs: bytes, issuer_key: ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate from raw TBSCertificate bytes, signed ecdsa-with-SHA384 by `issuer_key`."""
    signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA384()))
    return tlv(0x30, tbs + ECDSA_SHA384_ALGORITHM + tlv(0x03, b"\x00" + signature))


def reissue(
    der: bytes,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    patch: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """`der` with the same subject, issuer, key, validity and extensions (plus `extra`), re-signed by the
    same issuer; `patch` edits the to-be-signed bytes before the final signature."""
    cert = x509.load_der_x509_certificate(der)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    for value, critical in extra:
        builder = builder.add_extension(value, critical)
    rebuilt = builder.sign(issuer_key, hashes.SHA384())
    if patch is None:
        return rebuilt.public_bytes(Encoding.DER)
    tbs = patch(rebuilt.tbs_certificate_bytes)
    assert tbs != rebuilt.tbs_certificate_bytes
    return sign_tbs(tbs, issuer_key)


def replace_once(old: bytes, new: bytes, *, occurrence: int = 0) -> Callable[[bytes], bytes]:
    assert len(old) == len(new)

    def patch(tbs: bytes) -> bytes:
        position = -1
        for _ in range(occurrence + 1):
            position = tbs.index(old, position + 1)
        return tbs[:position] + new + tbs[position + len(old) :]

    return patch


# -- documents signed with the simulator PKI -----------------------------------------------------------


@dataclasses.dataclass
class Pki:
    sim: SimulatorPki
    authorities: list[_Authority]  # root, regional, zonal, instance
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: bytes

    @property
    def cabundle(self) -> tuple[bytes, ...]:
        return tuple(authority.der for authority in self.authorities)

    def issuer_key(self, position: int) -> ec.EllipticCurvePrivateKey:
        """The key that signs the certificate at `position` (0..3 cabundle, 4 the leaf)."""
        return self.authorities[max(position - 1, 0)].key

    def document(
        self,
        *,
        cabundle: tuple[bytes, ...] | None = None,
        certificate: bytes | None = None,
        unprotected: bytes = b"\xa0",
    ) -> bytes:
        doc = AttestationDocument(
            module_id=MODULE_ID,
            digest="SHA384",
            timestamp_ms=int(NOW.timestamp() * 1000),
            pcrs={i: bytes((i + 1,)) * 48 for i in range(16)},
            certificate=certificate or self.leaf,
            cabundle=cabundle or self.cabundle,
            public_key=b"k" * 64,
            user_data=None,
            nonce=None,
        )
        payload = doc.encode_payload()
        r, s = decode_dss_signature(
            self.leaf_key.sign(sig_structure(ES384_PROTECTED, payload), ec.ECDSA(hashes.SHA384()))
        )
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        envelope = encode_sign1(ES384_PROTECTED, payload, signature)
        assert envelope[6:7] == b"\xa0"
        return envelope[:6] + unprotected + envelope[7:]

    def with_cert(self, position: int, der: bytes) -> bytes:
        """A document whose certificate at `position` (0..3 cabundle, 4 the leaf) is `der`."""
        if position == 4:
            return self.document(certificate=der)
        bundle = list(self.cabundle)
        bundle[position] = der
        return self.document(cabundle=tuple(bundle))

    def cert(self, position: int) -> bytes:
        return self.leaf if position == 4 else self.cabundle[position]

    def policy(self) -> Policy:
        return Policy(root=self.sim.root)


@pytest.fixture
def pki(sim_pki: SimulatorPki) -> Pki:
    leaf_key, leaf = sim_pki.leaf(MODULE_ID, NOW)
    return Pki(sim_pki, list(sim_pki._chain), leaf_key, leaf)


def rejected(data: bytes, policy: Policy, at: datetime = NOW) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify(data, policy, at=at)
    return info.value


POSITIONS = [
    (1, "cabundle[1]", "cabundle"),
    (2, "cabundle[2]", "cabundle"),
    (4, "certificate", "certificate"),
]


def test_the_simulator_document_verifies(pki: Pki) -> None:
    result = verify(pki.document(), pki.policy(), at=NOW)
    assert result.simulated and len(result.chain_subjects) == 5


def test_reissued_certificates_still_link(pki: Pki) -> None:
    # The helper itself changes nothing that matters: a re-signed copy of every certificate verifies.
    for position in range(1, 5):
        copy = reissue(pki.cert(position), pki.issuer_key(position))
        verify(pki.with_cert(position, copy), pki.policy(), at=NOW)


# -- 1. known escapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("position", "where", "field"), POSITIONS)
def test_duplicate_extension_is_malformed_not_an_escape(
    pki: Pki, position: int, where: str, field: str
) -> None:
    # Regression (fuzzing): cryptography raises x509.DuplicateExtension, which is not a ValueError, when the
    # extensions are first read; it escaped verify(). Plant a second keyUsage, then re-sign.
    cert = x509.load_der_x509_certificate(pki.cert(position))
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    decoy = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.99"), usage.public_bytes())
    forged = reissue(
        pki.cert(position),
        pki.issuer_key(position),
        extra=((decoy, False),),
        patch=replace_once(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x0f"),
    )
    with pytest.raises(x509.DuplicateExtension):
        _ = x509.load_der_x509_certificate(forged).extensions
    error = rejected(pki.with_cert(position, forged), pki.policy())
    assert error.code == f"malformed:{field}"
    assert error.detail.startswith(f"{where} [duplicate-extension]:")
    assert "keyUsage" in error.detail


def test_bit_string_name_attribute_is_malformed_not_a_type_error(pki: Pki) -> None:
    # Regression (fuzzing): a name attribute encoded as a BIT STRING makes cryptography raise TypeError
    # while it builds the Name; it escaped verify() from certificate loading.
    forged = reissue(
        pki.leaf,
        pki.issuer_key(4),
        patch=replace_once(b"\x0c\x09SIMULATED", b"\x03\x09\x00IMULATED", occurrence=1),  # the subject's
    )
    with pytest.raises(TypeError):
        _ = x509.load_der_x509_certificate(forged).subject
    error = rejected(pki.with_cert(4, forged), pki.policy())
    assert error.code == "malformed:certificate"
    assert error.detail.startswith("certificate [der]:")
    assert "TypeError" in error.detail


def test_unsupported_general_name_is_malformed_not_an_escape(pki: Pki) -> None:
    # Found by the same fuzzing: an x400Address GeneralName raises UnsupportedGeneralNameType (an Exception).
    alt = x509.IssuerAlternativeName([x509.DNSName("a.example")])
    forged = reissue(
        pki.cert(1),
        pki.issuer_key(1),
        extra=((alt, False),),
        patch=replace_once(b"\x82\x09a.example", b"\xa3\x09a.example"),
    )
    with pytest.raises(x509.UnsupportedGeneralNameType):
        _ = x509.load_der_x509_certificate(forged).extensions
    error = rejected(pki.with_cert(1, forged), pki.policy())
    assert error.code == "malformed:cabundle"
    assert error.detail.startswith("cabundle[1] [extensions]:")


def test_mutated_certificates_never_escape(pki: Pki) -> None:
    # A deterministic sweep of single-byte changes inside every certificate of a signed document.
    import random

    rng = random.Random(20250101)
    document = pki.document()
    policy = pki.policy()
    spans = [(document.index(der), len(der)) for der in (*pki.cabundle, pki.leaf)]
    for _ in range(600):
        start, length = rng.choice(spans)
        position = start + rng.randrange(length)
        mutated = bytearray(document)
        mutated[position] = rng.randrange(256)
        with contextlib.suppress(AttestationError):
            verify(bytes(mutated), policy, at=NOW)


# -- 2. structure before any signature ------------------------------------------------------------------


def test_version_1_certificate_is_malformed(pki: Pki) -> None:
    tbs = x509.load_der_x509_certificate(pki.leaf).tbs_certificate_bytes
    fields = children(tbs)
    assert fields[0].startswith(b"\xa0") and fields[-1].startswith(b"\xa3")  # version, extensions
    v1 = sign_tbs(tlv(0x30, b"".join(fields[1:-1])), pki.issuer_key(4))
    assert x509.load_der_x509_certificate(v1).version is x509.Version.v1
    error = rejected(pki.with_cert(4, v1), pki.policy())
    assert error.code == "malformed:certificate"  # was cert_constraints (no keyUsage)
    assert error.detail.startswith("certificate [version]:")


@pytest.mark.parametrize(("position", "where", "_field"), POSITIONS)
def test_unknown_critical_extension_is_rejected(pki: Pki, position: int, where: str, _field: str) -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    forged = reissue(pki.cert(position), pki.issuer_key(position), extra=((unknown, True),))
    error = rejected(pki.with_cert(position, forged), pki.policy())
    assert error.code == "cert_constraints"
    assert error.detail.startswith(f"{where} [critical-extension]:")
    assert "1.3.6.1.4.1.55555.1" in error.detail


def test_unknown_non_critical_extension_is_accepted(pki: Pki) -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    forged = reissue(pki.cert(2), pki.issuer_key(2), extra=((unknown, False),))
    verify(pki.with_cert(2, forged), pki.policy(), at=NOW)


def test_known_extension_marked_critical_is_rejected(pki: Pki) -> None:
    # Nitro marks only basicConstraints and keyUsage critical; a critical extendedKeyUsage is not Nitro's.
    usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    forged = reissue(pki.leaf, pki.issuer_key(4), extra=((usage, True),))
    error = rejected(pki.with_cert(4, forged), pki.policy())
    assert error.code == "cert_constraints"
    assert error.detail.startswith("certificate [critical-extension]: critical extension extendedKeyUsage")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_hardware_certificates_mark_only_the_allowed_extensions_critical(path) -> None:
    doc = decode(path.read_bytes()).document
    critical = {
        extension.oid
        for der in (*doc.cabundle, doc.certificate)
        for extension in x509.load_der_x509_certificate(der).extensions
        if extension.critical
    }
    assert critical == chain_module.ALLOWED_CRITICAL


def test_structure_of_every_certificate_is_checked_before_any_signature(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The regional CA is signed by an impostor root key (a signature failure at the first link) and the
    # leaf, last in the chain, carries an unknown critical extension: the structural defect wins, and no
    # signature is verified at all.
    impostor = ec.generate_private_key(ec.SECP384R1())
    bad_signature = reissue(pki.cert(1), impostor)
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    bad_leaf = reissue(pki.leaf, pki.issuer_key(4), extra=((unknown, True),))
    bundle = list(pki.cabundle)
    bundle[1] = bad_signature
    data = pki.document(cabundle=tuple(bundle), certificate=bad_leaf)

    def no_signatures(*_args: object) -> None:
        raise AssertionError("a signature was checked before the structure of every certificate")

    monkeypatch.setattr(chain_module, "_signed_by", no_signatures)
    error = rejected(data, pki.policy())
    assert error.detail.startswith("certificate [critical-extension]:")
    monkeypatch.undo()
    # Without the structural defect, the same chain fails at its first link.
    error = rejected(pki.document(cabundle=tuple(bundle)), pki.policy())
    assert error.code == "chain_broken"
    assert error.detail.startswith("cabundle[1] [issued-by]:")


# -- 3. bounds before any cryptography -----------------------------------------------------------------


def test_cabundle_length_is_bounded_before_any_crypto(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    root, regional, zonal, instance = pki.cabundle
    too_long = (root, regional, zonal, *([instance] * (MAX_CABUNDLE - 2)))
    assert len(too_long) == MAX_CABUNDLE + 1 == 9

    def no_certificates(*_args: object) -> None:
        raise AssertionError("a certificate was parsed")

    monkeypatch.setattr(chain_module, "_parse", no_certificates)
    with pytest.raises(AttestationError) as info:
        decode(pki.document(cabundle=too_long))
    assert info.value.code == "malformed:cabundle"
    assert "9 certificates, at most 8" in info.value.detail
    assert rejected(pki.document(cabundle=too_long), pki.policy()).code == "malformed:cabundle"
    # At the bound the bundle decodes (and then fails as a chain, not as a size).
    monkeypatch.undo()
    at_bound = too_long[:-1]
    assert len(decode(pki.document(cabundle=at_bound)).document.cabundle) == MAX_CABUNDLE
    assert rejected(pki.document(cabundle=at_bound), pki.policy()).code == "chain_broken"


def test_a_deep_but_valid_chain_is_bounded_too() -> None:
    # Without the bound a correctly linked bundle of nine CAs verified.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    authorities: list[_Authority] = []
    for index in range(MAX_CABUNDLE + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        issuer = authorities[-1] if authorities else None
        cert = _issue(
            _name(f"ca{index}"),
            key,
            issuer,
            now,
            timedelta(days=1),
            ca=True,
            path_length=None,
            usage=_CA_USAGE,
        )
        authorities.append(_Authority(key, cert))
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _issue(
        _name("leaf"),
        leaf_key,
        authorities[-1],
        now,
        timedelta(hours=1),
        ca=False,
        path_length=None,
        usage=_LEAF_USAGE,
        usage_critical=False,
        key_ids=False,
    )
    bundle = tuple(a.der for a in authorities)
    root = TrustedRoot(bundle[0], "deep")
    at = now + timedelta(minutes=1)
    verify_chain(leaf.public_bytes(Encoding.DER), bundle, root, at)  # the chain itself is fine
    doc = dataclasses.replace(REAL_SIGNED.document, cabundle=bundle)
    forged = encode_sign1(REAL_SIGNED.cose.protected, doc.encode_payload(), REAL_SIGNED.cose.signature)
    assert rejected(forged, Policy(root=root), at=at).code == "malformed:cabundle"


def test_document_size_is_bounded(pki: Pki) -> None:
    # The unprotected header is unsigned, so padding it used to leave a valid document of any size.
    padding = cbor2.dumps({"pad": b"p" * (MAX_DOCUMENT - 4500)})
    assert len(pki.document(unprotected=padding)) < MAX_DOCUMENT
    verify(pki.document(unprotected=padding), pki.policy(), at=NOW)
    oversized = pki.document(unprotected=cbor2.dumps({"pad": b"p" * MAX_DOCUMENT}))
    with pytest.raises(AttestationError) as info:
        decode(oversized)
    assert info.value.code == "malformed:cose"
    assert f"at most {MAX_DOCUMENT}" in info.value.detail


def test_real_documents_are_well_inside_the_bounds() -> None:
    for path in VALID:
        data = path.read_bytes()
        assert len(data) <= MAX_DOCUMENT // 2
        assert len(decode(data).document.cabundle) == 4 <= MAX_CABUNDLE


# -- 4. every certificate rejection names its position and rule -----------------------------------------


def with_cabundle(cabundle: tuple[bytes, ...], certificate: bytes | None = None) -> bytes:
    doc = dataclasses.replace(
        REAL_SIGNED.document, cabundle=cabundle, certificate=certificate or REAL_SIGNED.document.certificate
    )
    return encode_sign1(REAL_SIGNED.cose.protected, doc.encode_payload(), REAL_SIGNED.cose.signature)


def real_rejection(data: bytes, at: datetime = REAL_AT) -> tuple[str, str]:
    error = rejected(data, Policy(), at=at)
    return error.code, error.detail


ROOT, REGIONAL, ZONAL, INSTANCE = REAL_SIGNED.document.cabundle
LEAF = x509.load_der_x509_certificate(REAL_SIGNED.document.certificate)


@pytest.mark.parametrize(
    ("data", "at", "code", "prefix"),
    [
        (
            with_cabundle((REGIONAL, ROOT, ZONAL, INSTANCE)),
            REAL_AT,
            "root_not_trusted",
            "cabundle[0] [pinned-root]",
        ),
        (
            with_cabundle((ROOT, ZONAL, REGIONAL, INSTANCE)),
            REAL_AT,
            "chain_broken",
            "cabundle[1] [issuer-name]",
        ),
        (
            with_cabundle((ROOT, REGIONAL, ZONAL, ZONAL, INSTANCE)),
            REAL_AT,
            "chain_broken",
            "cabundle[3] [issuer-name]",
        ),
        (
            with_cabundle((ROOT, REGIONAL, ZONAL), INSTANCE),
            REAL_AT,
            "cert_constraints",
            "certificate [basic-constraints]",
        ),
        (REAL, LEAF.not_valid_after_utc + timedelta(seconds=1), "cert_expired", "certificate [validity]"),
        (
            REAL,
            LEAF.not_valid_before_utc - timedelta(seconds=1),
            "cert_not_yet_valid",
            "certificate [validity]",
        ),
        (
            with_cabundle((ROOT, REGIONAL, ZONAL[:-1] + bytes((ZONAL[-1] ^ 1,)), INSTANCE)),
            REAL_AT,
            "chain_broken",
            "cabundle[2] [issued-by]",
        ),
        (
            with_cabundle((ROOT, REGIONAL, ZONAL, INSTANCE[:40])),
            REAL_AT,
            "malformed:cabundle",
            "cabundle[3] [der]",
        ),
    ],
    ids=[
        "root",
        "issuer-name",
        "repeated",
        "ca-as-leaf",
        "expired",
        "not-yet-valid",
        "signature",
        "truncated",
    ],
)
def test_hardware_chain_rejections_name_position_and_rule(
    data: bytes, at: datetime, code: str, prefix: str
) -> None:
    actual_code, detail = real_rejection(data, at)
    assert actual_code == code
    assert detail.startswith(prefix + ":"), detail


def test_bad_version_in_the_bundle_names_its_position() -> None:
    cert = bytearray(ZONAL)
    cert[cert.index(b"\xa0\x03\x02\x01\x02") + 4] = 0x38
    code, detail = real_rejection(with_cabundle((ROOT, REGIONAL, bytes(cert), INSTANCE)))
    assert code == "malformed:cabundle"
    assert detail.startswith("cabundle[2] [version]:")


def test_oversized_certificate_names_its_position() -> None:
    code, detail = real_rejection(with_cabundle((ROOT, REGIONAL, b"\x30" * 9000, INSTANCE)))
    assert code == "malformed:cabundle"
    assert detail.startswith("cabundle[2]:")


NOW_CHAIN = datetime(2026, 1, 1, tzinfo=UTC)


def ca(
    name: str,
    issuer: _Authority | None,
    path_length: int | None,
    usage: x509.KeyUsage = _CA_USAGE,
    *,
    is_ca: bool = True,
) -> _Authority:
    key = ec.generate_private_key(ec.SECP384R1())
    return _Authority(
        key,
        _issue(
            _name(name),
            key,
            issuer,
            NOW_CHAIN - timedelta(days=1),
            timedelta(days=9),
            ca=is_ca,
            path_length=path_length,
            usage=usage,
        ),
    )


def leaf_of(
    issuer: _Authority,
    *,
    usage: x509.KeyUsage = _LEAF_USAGE,
    curve: ec.EllipticCurve | None = None,
    algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
) -> bytes:
    key = ec.generate_private_key(curve or ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("leaf"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW_CHAIN - timedelta(hours=1))
        .not_valid_after(NOW_CHAIN + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(issuer.key, algorithm or hashes.SHA384())
    )
    return cert.public_bytes(Encoding.DER)


NO_CERT_SIGN = x509.KeyUsage(True, False, False, False, False, False, True, False, False)
NO_SIGNING = x509.KeyUsage(False, True, False, False, False, False, False, False, False)


def chain_rejection(certificate: bytes, cas: list[_Authority]) -> tuple[str, str]:
    with pytest.raises(AttestationError) as info:
        verify_chain(certificate, tuple(a.der for a in cas), TrustedRoot(cas[0].der, "t"), NOW_CHAIN)
    return info.value.code, info.value.detail


def test_constraint_rejections_name_position_and_rule() -> None:
    root = ca("root", None, None)
    tight = ca("tight", root, 0)
    below = ca("below", tight, None)
    assert chain_rejection(leaf_of(below), [root, tight, below])[1].startswith("cabundle[1] [path-length]:")
    plain = ca("plain", root, None, is_ca=False)
    assert chain_rejection(leaf_of(plain), [root, plain])[1].startswith("cabundle[1] [basic-constraints]:")
    no_sign = ca("nosign", root, None, NO_CERT_SIGN)
    assert chain_rejection(leaf_of(no_sign), [root, no_sign])[1].startswith("cabundle[1] [key-usage]:")
    code, detail = chain_rejection(leaf_of(root, usage=NO_SIGNING), [root])
    assert (code, detail.split(":")[0]) == ("cert_constraints", "certificate [key-usage]")
    code, detail = chain_rejection(leaf_of(root, curve=ec.SECP256R1()), [root])
    assert (code, detail.split(":")[0]) == ("cert_constraints", "certificate [leaf-key]")
    code, detail = chain_rejection(leaf_of(root, algorithm=hashes.SHA256()), [root])
    assert (code, detail.split(":")[0]) == ("chain_broken", "certificate [signature-algorithm]")
    impostor = ca("root", None, None)
    code, detail = chain_rejection(leaf_of(impostor), [root])
    assert (code, detail.split(":")[0]) == ("chain_broken", "certificate [issued-by]")
    assert "was not issued by cabundle[0]" in detail


# -- 5. NSM error codes ---------------------------------------------------------------------------------


def test_nsm_error_codes_are_the_nsm_api_enum() -> None:
    assert [code.value for code in NsmErrorCode] == [
        "Success",
        "InvalidArgument",
        "InvalidIndex",
        "InvalidResponse",
        "ReadOnlyIndex",
        "InvalidOperation",
        "BufferTooSmall",
        "InputTooLarge",
        "InternalError",
    ]
    assert [code.number for code in NsmErrorCode] == list(range(9))
    assert NsmErrorCode.from_wire("ReadOnlyIndex") is NsmErrorCode.READ_ONLY_INDEX
    assert NsmErrorCode.from_wire("Mystery") is None
    assert NsmErrorCode.from_wire(3) is None
    assert str(NsmErrorCode.READ_ONLY_INDEX) == "ReadOnlyIndex"  # a StrEnum: codes are their wire names
    assert "ReadOnlyIndex" in {NsmErrorCode.READ_ONLY_INDEX}


@pytest.mark.parametrize("code", [c for c in NsmErrorCode if c is not NsmErrorCode.SUCCESS])
def test_every_error_response_becomes_its_enum_member(code: NsmErrorCode) -> None:
    with pytest.raises(NsmError) as info:
        decode_response(cbor2.dumps({"Error": code.value}), "DescribeNSM")
    assert info.value.code is code
    assert str(info.value) == f"NSM error {code.value}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("Success", NsmErrorCode.INVALID_RESPONSE),
        ("Mystery", NsmErrorCode.INTERNAL_ERROR),
        (7, NsmErrorCode.INTERNAL_ERROR),
        (["InvalidIndex"], NsmErrorCode.INTERNAL_ERROR),
    ],
)
def test_error_responses_that_name_no_error(body: object, code: NsmErrorCode) -> None:
    with pytest.raises(NsmError) as info:
        decode_response(cbor2.dumps({"Error": body}), "DescribeNSM")
    assert info.value.code is code


def test_simulator_and_transport_report_enum_members(sim_pki: SimulatorPki, tmp_path) -> None:
    nsm = NsmClient(SimulatedNsmDevice(sim_pki), simulated=True)
    with pytest.raises(NsmError) as info:
        nsm.extend_pcr(3, b"x")
    assert info.value.code is NsmErrorCode.READ_ONLY_INDEX
    with pytest.raises(NsmError) as info:
        nsm.describe_pcr(40)
    assert info.value.code is NsmErrorCode.INVALID_INDEX
    with pytest.raises(NsmError) as info:
        nsm.attestation(nonce=b"n" * 1025)
    assert info.value.code is NsmErrorCode.INPUT_TOO_LARGE

    def failing(_fd: int, _request: int, _arg: bytearray) -> object:
        raise OSError(errno.ENOMEM, "no memory")

    device = tmp_path / "nsm"
    device.write_bytes(b"")
    with pytest.raises(NsmError) as info:
        NsmClient(NitroTransport(str(device), ioctl=failing), simulated=False).get_random()
    assert info.value.code is NsmErrorCode.BUFFER_TOO_SMALL


def test_nsm_error_rejects_codes_outside_the_enum() -> None:
    with pytest.raises(ValueError):
        NsmError("Mystery")  # type: ignore[arg-type]
