"""Fixtures for chain tests: anvil, a deployed and configured verifier, the real server registered on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from attestation import Policy, TrustedRoot
from protocol.images import image_id
from relay.chain import TxSender, connect, deploy
from relay.deployment import configure, deploy_verifier, served_approvals
from relay.registration import attest_enclave, sign_registration, submit_registration
from verinfer.processes import ANVIL_KEYS, running_anvil


@dataclass
class Chain:
    url: str
    w3: Web3
    admin: TxSender
    verifier_key: LocalAccount
    relay: TxSender
    user: TxSender
    contract: Contract
    harness: Contract
    image: bytes
    models: dict[str, bytes]
    layouts: dict[bytes, bytes]  # modelHash -> approved output layout
    enclave: str

    def senders(self) -> list[TxSender]:
        return [self.admin, self.relay, self.user]

    def rpc(self, method: str, *params: object) -> object:
        return self.w3.provider.make_request(method, list(params))["result"]  # type: ignore[arg-type]


def sender(w3: Web3, index: int) -> TxSender:
    return TxSender(w3, Account.from_key(ANVIL_KEYS[index]))


@pytest.fixture(scope="session")
def anvil() -> Iterator[str]:
    with running_anvil() as url:
        yield url


@pytest.fixture(scope="session")
def chain(anvil: str, server: str, server_pki: Path) -> Chain:
    return build_chain(anvil, server, server_pki)


def build_chain(anvil: str, server: str, server_pki: Path) -> Chain:
    """Deploy and configure the verifier on `anvil` and register the real server on it."""
    w3 = connect(anvil)
    admin = sender(w3, 0)
    verifier_key = Account.from_key(ANVIL_KEYS[1])
    contract = deploy_verifier(admin)
    harness = deploy(admin, "CodecHarness")
    policy = Policy(root=TrustedRoot.from_file(server_pki / "root.pem"))
    attested = attest_enclave(server, policy)
    served = httpx.get(f"{server}/models").json()["models"]
    models = {m["name"]: bytes.fromhex(m["sha256"]) for m in served}
    layouts = served_approvals(served)
    image = image_id(dict(attested.pcrs))
    configure(admin, contract, images=[image], models=layouts, attestation_verifiers=[verifier_key.address])
    registration = sign_registration(
        verifier_key, attested, chain_id=w3.eth.chain_id, contract=contract.address
    )
    enclave = submit_registration(admin, contract, registration)
    return Chain(
        anvil,
        w3,
        admin,
        verifier_key,
        sender(w3, 2),
        sender(w3, 3),
        contract,
        harness,
        image,
        models,
        layouts,
        enclave,
    )


@pytest.fixture
def snapshot(chain: Chain) -> Iterator[Chain]:
    """Run a test on a chain snapshot and revert it afterwards (time included)."""
    snap = chain.rpc("evm_snapshot")
    try:
        yield chain
    finally:
        chain.rpc("evm_revert", snap)
        for tx_sender in chain.senders():
            tx_sender._next_nonce = None
