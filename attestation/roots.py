"""Trust anchors: the AWS Nitro root G1 shipped in the package, or a PEM the caller pins."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

AWS_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    """A pinned root certificate. Anything other than the AWS root means the chain is not hardware's."""

    der: bytes
    label: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def is_aws(self) -> bool:
        return self.sha256 == AWS_ROOT_SHA256

    @classmethod
    def from_pem(cls, pem: bytes, label: str) -> TrustedRoot:
        cert = x509.load_pem_x509_certificate(pem)
        return cls(cert.public_bytes(Encoding.DER), label)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustedRoot:
        path = Path(path)
        return cls.from_pem(path.read_bytes(), str(path))


@cache
def aws_nitro_root() -> TrustedRoot:
    """The AWS Nitro Enclaves root G1, checked against its published SHA-256 at load."""
    pem = resources.files("attestation").joinpath("roots/aws_nitro_root_g1.pem").read_bytes()
    root = TrustedRoot.from_pem(pem, "AWS Nitro Enclaves root G1")
    if not root.is_aws:
        raise RuntimeError("the packaged AWS Nitro root does not match its pinned SHA-256")
    return root


def resolve_root(spec: str) -> TrustedRoot:
    """`aws` for the packaged root, otherwise a path to a PEM file (for example a simulator's root)."""
    return aws_nitro_root() if spec == "aws" else TrustedRoot.from_file(spec)
