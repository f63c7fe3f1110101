"""The verinfer protocol: receipts, tensors, hashes, Merkle batches, the model manifest, input validation.

Pure: imports only `attestation` and third-party libraries, so auditors, relays and apps can depend on it
without the enclave server.
"""
