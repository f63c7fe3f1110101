"""The enclave inference server: models, /infer, /attestation and signed receipts."""
