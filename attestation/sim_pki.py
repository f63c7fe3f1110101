"""The simulator's development PKI, shaped like AWS's: root -> regional -> zonal -> instance -> leaf.

Same curve (P-384), signature algorithm (ecdsa-with-SHA384), extensions and criticality as the AWS
certificates, so documents it signs exercise every check a hardware document does. Every name says
SIMULATED, and its root is not the AWS root, so nothing it signs passes a policy pinning AWS.

The CA keys live in a directory (mode 0700) so that verifiers can pin `root.pem`; intermediates are
reissued when they would expire. Leaf keys never touch disk.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .roots import TrustedRoot

ROOT_LIFETIME = timedelta(days=365 * 30)
LEAF_LIFETIME = timedelta(hours=3)
_LEAF_ROTATE_MARGIN = timedelta(minutes=10)
_ROOT_NAME = "verinfer-simulator.nitro-enclaves"
_DOMAIN = "sim.nitro-enclaves"
# (file stem, lifetime, path length) below the root, in chain order.
_INTERMEDIATES = (
    ("regional", timedelta(days=20), 2),
    ("zonal", timedelta(days=6), 1),
    ("instance", timedelta(days=1), 0),
)
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_INSTANCE_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def default_directory() -> Path:
    env = os.environ.get("VERINFER_SIM_PKI")
    if env:
        return Path(env)
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "verinfer" / "sim-pki"


def _name(common_name: str, *, located: bool = False) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]
    if located:
        parts += [
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
        ]
    parts += [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "verinfer"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SIMULATED"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    return x509.Name(parts)


@dataclass(frozen=True, slots=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Authority | None,
    not_before: datetime,
    lifetime: timedelta,
    *,
    ca: bool,
    path_length: int | None,
    usage: x509.KeyUsage,
    usage_critical: bool = True,
    key_ids: bool = True,
) -> x509.Certificate:
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(72) | 1 << 64)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if key_ids:
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
            )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    builder = builder.add_extension(usage, critical=usage_critical)
    return builder.sign(signer_key, hashes.SHA384())


class SimulatorPki:
    """Loads or creates the CA hierarchy in `directory` and issues short-lived leaves from it."""

    def __init__(self, directory: str | Path | None = None, *, now: datetime | None = None) -> None:
        self.directory = Path(directory) if directory else default_directory()
        self._lock = threading.Lock()
        self._leaf: tuple[ec.EllipticCurvePrivateKey, bytes, datetime] | None = None
        self.region_id = ""
        self._chain = self._load_or_create(now or datetime.now(UTC))

    @property
    def root_pem_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root(self) -> TrustedRoot:
        return TrustedRoot(self._chain[0].der, f"verinfer simulator root ({self.root_pem_path})")

    def cabundle(self) -> tuple[bytes, ...]:
        return tuple(authority.der for authority in self._chain)

    def leaf(self, module_id: str, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """The current leaf key and certificate, reissued (like AWS's, about every 3 h) before it expires."""
        with self._lock:
            if (
                self._leaf is None
                or now + _LEAF_ROTATE_MARGIN > self._leaf[2]
                or now < self._leaf[2] - LEAF_LIFETIME
            ):
                if now + _LEAF_ROTATE_MARGIN > self._chain[-1].cert.not_valid_after_utc:
                    self._chain = self._load_or_create(now)
                key = ec.generate_private_key(ec.SECP384R1())
                start = now - timedelta(seconds=1)
                cert = _issue(
                    _name(f"{module_id}.{self.region_id}.sim", located=True),
                    key,
                    self._chain[-1],
                    start,
                    LEAF_LIFETIME,
                    ca=False,
                    path_length=None,
                    usage=_LEAF_USAGE,
                    usage_critical=False,
                    key_ids=False,
                )
                self._leaf = (key, cert.public_bytes(serialization.Encoding.DER), start + LEAF_LIFETIME)
            return self._leaf[0], self._leaf[1]

    def _load_or_create(self, now: datetime) -> list[_Authority]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        root = self._load("root")
        reissue = root is None or root.cert.not_valid_after_utc < now
        if root is None or reissue:
            key = ec.generate_private_key(ec.SECP384R1())
            cert = _issue(
                _name(_ROOT_NAME),
                key,
                None,
                now - timedelta(days=1),
                ROOT_LIFETIME,
                ca=True,
                path_length=None,
                usage=_CA_USAGE,
            )
            root = self._save("root", key, cert)
        chain = [root]
        self.region_id = self._region_id()
        for stem, lifetime, path_length in _INTERMEDIATES:
            current = None if reissue else self._load(stem)
            if (
                current is None
                or current.cert.not_valid_after_utc < now + LEAF_LIFETIME + _LEAF_ROTATE_MARGIN
            ):
                key = ec.generate_private_key(ec.SECP384R1())
                label = f"{secrets.token_hex(8)}.{stem}.{self.region_id}.{_DOMAIN}"
                cert = _issue(
                    _name(label, located=path_length == 0),
                    key,
                    chain[-1],
                    now - timedelta(minutes=5),
                    lifetime,
                    ca=True,
                    path_length=path_length,
                    usage=_INSTANCE_USAGE if path_length == 0 else _CA_USAGE,
                )
                current = self._save(stem, key, cert)
                reissue = True  # everything below a reissued CA must be reissued too
            chain.append(current)
        return chain

    def _region_id(self) -> str:
        path = self.directory / "region"
        if not path.exists():
            path.write_text("sim-" + secrets.token_hex(4))
        return path.read_text().strip()

    def _load(self, stem: str) -> _Authority | None:
        key_path, cert_path = self.directory / f"{stem}.key.pem", self.directory / f"{stem}.pem"
        if not (key_path.exists() and cert_path.exists()):
            return None
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC key")
        return _Authority(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))

    def _save(self, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> _Authority:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(self.directory / f"{stem}.key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        (self.directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return _Authority(key, cert)
