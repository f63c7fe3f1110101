"""Deploying and configuring a verifier: used by `verinfer relay deploy`, the demo and the tests."""

from __future__ import annotations

from collections.abc import Iterable

from web3.contract import Contract

from .chain import TxSender, deploy

DEFAULT_MAX_ATTESTATION_AGE_MS = 10 * 60 * 1000
DEFAULT_ENCLAVE_TTL_S = 24 * 3600


def deploy_verifier(
    admin: TxSender,
    *,
    max_attestation_age_ms: int = DEFAULT_MAX_ATTESTATION_AGE_MS,
    enclave_ttl_s: int = DEFAULT_ENCLAVE_TTL_S,
) -> Contract:
    return deploy(admin, "InferenceVerifier", admin.account.address, max_attestation_age_ms, enclave_ttl_s)


def configure(
    admin: TxSender,
    verifier: Contract,
    *,
    images: Iterable[bytes] = (),
    models: Iterable[bytes] = (),
    attestation_verifiers: Iterable[str] = (),
) -> None:
    """Approve images and models and trust attestation-verifier keys (admin only)."""
    for image in images:
        admin.transact(verifier.functions.approveImage(image))
    for model in models:
        admin.transact(verifier.functions.approveModel(model))
    for address in attestation_verifiers:
        admin.transact(verifier.functions.addVerifier(address))
