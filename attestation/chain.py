"""Explicit walk of the Nitro certificate chain: root (pinned) -> regional -> zonal -> instance -> leaf.

Generic X.509 path builders reject the AWS leaf because it has no Authority Key Identifier, so each link
is checked by hand: issuer name, signature, validity at the verification time, CA basic constraints with
path length, and key usage, as AWS documents and its certificates show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from .errors import AttestationError, Reason, malformed
from .roots import TrustedRoot

_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    leaf_key: ec.EllipticCurvePublicKey
    subjects: tuple[str, ...]  # root first, leaf last


@lru_cache(maxsize=256)
def _parse(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


@lru_cache(maxsize=256)
def _signed_by(subject_der: bytes, issuer_der: bytes) -> str | None:
    """None when `issuer` issued `subject`, else why not. Cached: intermediates repeat across documents."""
    subject, issuer = _parse(subject_der), _parse(issuer_der)
    if subject.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        return f"{subject.subject.rfc4514_string()} is not signed with ecdsa-with-SHA384"
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return (
            f"{subject.subject.rfc4514_string()} was not issued by {issuer.subject.rfc4514_string()}: {exc}"
        )
    return None


def _load(field: str, der: bytes) -> x509.Certificate:
    """Parse and touch every field the checks read: cryptography decodes some of them lazily."""
    try:
        cert = _parse(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid)
        _ = cert.extensions
        cert.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise malformed(field, f"not a usable DER X.509 certificate: {exc}") from exc
    return cert


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or unparsable extensions
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"bad extensions: {exc}") from exc


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    name = cert.subject.rfc4514_string()
    if at < cert.not_valid_before_utc:
        raise AttestationError(
            Reason.CERT_NOT_YET_VALID, f"{name} is valid from {cert.not_valid_before_utc.isoformat()}"
        )
    if at > cert.not_valid_after_utc:
        raise AttestationError(Reason.CERT_EXPIRED, f"{name} expired {cert.not_valid_after_utc.isoformat()}")


def _check_ca(cert: x509.Certificate, cas_below: int) -> None:
    name = cert.subject.rfc4514_string()
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"{name} is in the CA bundle but is not a CA")
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise AttestationError(
            Reason.CERT_CONSTRAINTS,
            f"{name} allows {constraints.path_length} CAs below it, the chain has {cas_below}",
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"{name} may not sign certificates (keyUsage)")


def _check_leaf(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    name = cert.subject.rfc4514_string()
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"leaf {name} must not be a CA")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"leaf {name} may not sign (keyUsage)")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(Reason.CERT_CONSTRAINTS, f"leaf {name} key is not ECDSA P-384")
    return key


def verify_chain(
    certificate: bytes, cabundle: tuple[bytes, ...], root: TrustedRoot, at: datetime
) -> VerifiedChain:
    """Check the leaf chains to `root` through `cabundle` and every certificate is valid at `at`."""
    if cabundle[0] != root.der:
        raise AttestationError(Reason.ROOT_NOT_TRUSTED, f"cabundle[0] is not the pinned root ({root.label})")
    path = [_load("cabundle", der) for der in cabundle]
    path.append(_load("certificate", certificate))
    ders = (*cabundle, certificate)
    for position in range(1, len(path)):
        problem = _signed_by(ders[position], ders[position - 1])
        if problem is not None:
            raise AttestationError(Reason.CHAIN_BROKEN, problem)
    for cert in path:
        _check_validity(cert, at)
    for position, cert in enumerate(path[:-1]):
        _check_ca(cert, cas_below=len(path) - 2 - position)
    leaf_key = _check_leaf(path[-1])
    return VerifiedChain(leaf_key, tuple(cert.subject.rfc4514_string() for cert in path))
