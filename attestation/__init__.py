"""AWS Nitro attestation documents: decode, verify against a pinned root and policy, and produce them.

A pure library: it imports nothing from the rest of verinfer.
"""

from .document import AttestationDocument, SignedDocument, decode
from .errors import AttestationError, Reason
from .measure import ImageMeasurement, measure_tree
from .roots import TrustedRoot, aws_nitro_root, resolve_root
from .verify import Policy, VerifiedAttestation, verify

__all__ = [
    "AttestationDocument",
    "AttestationError",
    "ImageMeasurement",
    "Policy",
    "Reason",
    "SignedDocument",
    "TrustedRoot",
    "VerifiedAttestation",
    "aws_nitro_root",
    "decode",
    "measure_tree",
    "resolve_root",
    "verify",
]
