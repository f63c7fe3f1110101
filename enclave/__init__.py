"""The enclave inference server: models, /infer, /attestation and signed receipts."""

__version__ = "0.1.0"
