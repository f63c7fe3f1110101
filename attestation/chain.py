"""Explicit walk of the Nitro certificate chain: root (pinned) -> regional -> zonal -> instance -> leaf.

Generic X.509 path builders reject the AWS leaf because it has no Authority Key Identifier, so each link
is checked by hand, in the order pyca/cryptography's verifier uses: first the structure of every
certificate, then names and signature algorithms, then the signatures, then validity at the verification
time, CA basic constraints with path length, and key usage, as AWS documents and its certificates show.

Structure (checked for every certificate before the first signature is verified):

- it parses as DER X.509 with every field the later checks read (cryptography decodes names, extensions
  and the key lazily, and raises many unrelated exception types from them);
- it is version 3;
- its extensions parse and none appears twice (RFC 5280 4.2);
- no extension is critical except basicConstraints and keyUsage, the only ones Nitro marks critical
  (RFC 5280 4.2: an unrecognised critical extension must be rejected; we recognise no others).

Every rejection names the certificate's position (`cabundle[i]` or `certificate`) and the rule, as
`<position> [<rule>]: <what is wrong>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from .errors import AttestationError, Reason
from .roots import TrustedRoot

_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

# What the AWS Nitro certificates mark critical (root, regional, zonal, instance and leaf alike).
ALLOWED_CRITICAL = frozenset((ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE))


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    leaf_key: ec.EllipticCurvePublicKey
    subjects: tuple[str, ...]  # root first, leaf last


class _Defect(Exception):
    """A structural defect found by `_parse`, before the certificate's position is known."""

    def __init__(self, reason: Reason, rule: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.rule = rule
        self.text = text


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


@lru_cache(maxsize=256)
def _parse(der: bytes) -> x509.Certificate:
    """Parse `der` and check its structure; raises _Defect. Cached: intermediates repeat across documents.

    cryptography parses lazily and its decoders raise ValueError, TypeError, InvalidVersion,
    DuplicateExtension, UnsupportedGeneralNameType or UnsupportedAlgorithm, with no common base class
    besides Exception. Each guarded block below calls only into cryptography on untrusted bytes, so any
    exception there means the certificate does not parse.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except x509.InvalidVersion as exc:
        raise _Defect(Reason.MALFORMED, "version", f"not an X.509 v3 certificate: {exc}") from exc
    except Exception as exc:
        raise _Defect(Reason.MALFORMED, "der", f"not a DER X.509 certificate: {_describe(exc)}") from exc
    try:
        version = cert.version
    except Exception as exc:
        raise _Defect(Reason.MALFORMED, "version", f"not an X.509 v3 certificate: {_describe(exc)}") from exc
    if version is not x509.Version.v3:
        raise _Defect(Reason.MALFORMED, "version", f"is X.509 {version.name}, must be v3")
    try:
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid)
        cert.public_key()
    except Exception as exc:
        raise _Defect(Reason.MALFORMED, "der", f"a field does not parse: {_describe(exc)}") from exc
    try:
        extensions = cert.extensions
    except x509.DuplicateExtension as exc:
        raise _Defect(
            Reason.MALFORMED, "duplicate-extension", f"extension {_oid_name(exc.oid)} appears more than once"
        ) from exc
    except Exception as exc:
        raise _Defect(Reason.MALFORMED, "extensions", f"extensions do not parse: {_describe(exc)}") from exc
    for extension in extensions:
        if extension.critical and extension.oid not in ALLOWED_CRITICAL:
            raise _Defect(
                Reason.CERT_CONSTRAINTS,
                "critical-extension",
                f"critical extension {_oid_name(extension.oid)} is not one Nitro uses "
                "(only basicConstraints and keyUsage may be critical)",
            )
    return cert


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else f"{name} ({oid.dotted_string})"


def _load(field: str, where: str, der: bytes) -> x509.Certificate:
    try:
        return _parse(der)
    except _Defect as defect:
        raise AttestationError(
            defect.reason,
            f"{where} [{defect.rule}]: {defect.text}",
            field if defect.reason is Reason.MALFORMED else None,
        ) from defect


@lru_cache(maxsize=256)
def _signed_by(subject_der: bytes, issuer_der: bytes) -> str | None:
    """None when `issuer` signed `subject`, else why not. Cached: intermediates repeat across documents."""
    subject, issuer = _parse(subject_der), _parse(issuer_der)
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return f"signature does not verify with the issuer's key: {_describe(exc)}"
    return None


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    # The extensions already parsed without duplicates in `_parse`.
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_link(subject: x509.Certificate, where: str, issuer: x509.Certificate, issuer_where: str) -> None:
    """The checks of one link that need no cryptography: signature algorithm and issuer name."""
    if subject.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise AttestationError(
            Reason.CHAIN_BROKEN,
            f"{where} [signature-algorithm]: {_name(subject)} is not signed with ecdsa-with-SHA384",
        )
    if subject.issuer != issuer.subject:
        raise AttestationError(
            Reason.CHAIN_BROKEN,
            f"{where} [issuer-name]: issuer {subject.issuer.rfc4514_string()} is not the subject of "
            f"{issuer_where} ({_name(issuer)})",
        )


def _check_validity(cert: x509.Certificate, where: str, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise AttestationError(
            Reason.CERT_NOT_YET_VALID,
            f"{where} [validity]: {_name(cert)} is valid from {cert.not_valid_before_utc.isoformat()}",
        )
    if at > cert.not_valid_after_utc:
        raise AttestationError(
            Reason.CERT_EXPIRED,
            f"{where} [validity]: {_name(cert)} expired {cert.not_valid_after_utc.isoformat()}",
        )


def _check_ca(cert: x509.Certificate, where: str, cas_below: int) -> None:
    name = _name(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise AttestationError(
            Reason.CERT_CONSTRAINTS, f"{where} [basic-constraints]: {name} is in the CA bundle, not a CA"
        )
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise AttestationError(
            Reason.CERT_CONSTRAINTS,
            f"{where} [path-length]: {name} allows {constraints.path_length} CAs below it, "
            f"the chain has {cas_below}",
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise AttestationError(
            Reason.CERT_CONSTRAINTS, f"{where} [key-usage]: {name} may not sign certificates (keyCertSign)"
        )


def _check_leaf(cert: x509.Certificate, where: str) -> ec.EllipticCurvePublicKey:
    name = _name(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"{where} [basic-constraints]: leaf {name} is a CA")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        raise AttestationError(
            Reason.CERT_CONSTRAINTS, f"{where} [key-usage]: leaf {name} may not sign (digitalSignature)"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"{where} [leaf-key]: leaf {name} key is not P-384")
    return key


def verify_chain(
    certificate: bytes, cabundle: tuple[bytes, ...], root: TrustedRoot, at: datetime
) -> VerifiedChain:
    """Check the leaf chains to `root` through `cabundle` and every certificate is valid at `at`.

    Order: pinned root (bytes), structure of every certificate, then per link the signature algorithm and
    issuer name, and only then the signatures; validity and constraints last.
    """
    if not cabundle or cabundle[0] != root.der:
        raise AttestationError(
            Reason.ROOT_NOT_TRUSTED, f"cabundle[0] [pinned-root]: is not the pinned root ({root.label})"
        )
    ders = (*cabundle, certificate)
    places = (*(f"cabundle[{i}]" for i in range(len(cabundle))), "certificate")
    path = [
        _load("cabundle" if position < len(cabundle) else "certificate", places[position], der)
        for position, der in enumerate(ders)
    ]
    for position in range(1, len(path)):
        _check_link(path[position], places[position], path[position - 1], places[position - 1])
    for position in range(1, len(path)):
        problem = _signed_by(ders[position], ders[position - 1])
        if problem is not None:
            raise AttestationError(
                Reason.CHAIN_BROKEN,
                f"{places[position]} [issued-by]: {_name(path[position])} was not issued by "
                f"{places[position - 1]} ({_name(path[position - 1])}): {problem}",
            )
    for position, cert in enumerate(path):
        _check_validity(cert, places[position], at)
    for position, cert in enumerate(path[:-1]):
        _check_ca(cert, places[position], cas_below=len(path) - 2 - position)
    leaf_key = _check_leaf(path[-1], places[-1])
    return VerifiedChain(leaf_key, tuple(_name(cert) for cert in path))
