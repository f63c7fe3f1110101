"""Deploying and configuring a verifier: used by `verinfer relay deploy`, the demo and the tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from web3.contract import Contract

from protocol.manifest import Manifest
from protocol.onchain import output_layout

from .chain import TxSender, deploy

DEFAULT_MAX_ATTESTATION_AGE_MS = 10 * 60 * 1000
DEFAULT_ENCLAVE_TTL_S = 24 * 3600

# What approveModel takes: a model hash and the layout hash of its complete outputs.
ModelApprovals = Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]


def deploy_verifier(
    admin: TxSender,
    *,
    max_attestation_age_ms: int = DEFAULT_MAX_ATTESTATION_AGE_MS,
    enclave_ttl_s: int = DEFAULT_ENCLAVE_TTL_S,
) -> Contract:
    return deploy(admin, "InferenceVerifier", admin.account.address, max_attestation_age_ms, enclave_ttl_s)


def manifest_approvals(manifest: Manifest) -> dict[bytes, bytes]:
    """modelHash -> output layout for every model of a manifest (the contract refuses partial outputs)."""
    return {
        entry.model_hash: output_layout((o.name, o.dtype) for o in entry.outputs)
        for entry in manifest.models.values()
    }


def served_approvals(models: Iterable[Mapping[str, Any]]) -> dict[bytes, bytes]:
    """modelHash -> output layout from a server's GET /models entries (outputs with name and dtype)."""
    return {
        bytes.fromhex(str(m["sha256"])): output_layout(
            (str(o["name"]), str(o["dtype"])) for o in m["outputs"]
        )
        for m in models
    }


def configure(
    admin: TxSender,
    verifier: Contract,
    *,
    images: Iterable[bytes] = (),
    models: ModelApprovals = (),
    attestation_verifiers: Iterable[str] = (),
) -> None:
    """Approve images and models (each with its output layout), trust attestation-verifier keys (admin)."""
    for image in images:
        admin.transact(verifier.functions.approveImage(image))
    for model, layout in models.items() if isinstance(models, Mapping) else models:
        admin.transact(verifier.functions.approveModel(model, layout))
    for address in attestation_verifiers:
        admin.transact(verifier.functions.addVerifier(address))
