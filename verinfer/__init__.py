"""The `verinfer` command: one front door over the attestation, enclave and relay packages."""
