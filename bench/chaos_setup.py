"""The chaos run's world: one anvil, real enclave servers, a deployed and configured verifier.

Shared by `python -m bench.chaos` and tests/test_chaos.py, so the small run in the tests and the full run
in docs/RELIABILITY.md set up exactly the same thing. Everything is a real process: anvil (pinned),
`verinfer serve` with the simulated NSM, the contracts from relay/artifacts, and (in bench.chaos_actors)
`verinfer relay run` subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from attestation import Policy, TrustedRoot
from protocol.images import image_id
from relay.chain import TxSender, connect
from relay.deployment import configure, deploy_verifier, served_approvals
from relay.registration import attest_enclave, sign_registration, submit_registration
from verinfer.processes import ANVIL_KEYS, running_anvil, running_server

from .rpc_proxy import RpcProxy

# Roles among anvil's development accounts (the tests use the same split).
ADMIN, VERIFIER, RELAY_A, USER, RELAY_B, SPARE = range(6)
RELAY_KEYS = (RELAY_A, RELAY_B)


@dataclass
class World:
    anvil_url: str
    proxy: RpcProxy
    w3: Web3
    admin: TxSender
    verifier_key: LocalAccount
    user: LocalAccount
    contract: Contract
    models: dict[str, bytes]
    enclaves: list[str]
    enclave_addresses: list[str]
    workdir: Path
    relay_accounts: list[LocalAccount] = field(default_factory=list)

    @property
    def relay_rpc(self) -> str:
        """What the relays connect to: the outage proxy, never anvil itself."""
        return self.proxy.url

    def rpc(self, method: str, *params: object) -> object:
        reply = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def known_accounts(self) -> list[str]:
        return [Account.from_key(key).address for key in ANVIL_KEYS]


def _register(
    world_w3: Web3, admin: TxSender, contract: Contract, url: str, *, verifier: LocalAccount, pki: Path
) -> str:
    """Attest the enclave at `url` against the simulator root, sign its registration, submit it."""
    attested = attest_enclave(url, Policy(root=TrustedRoot.from_file(pki / "root.pem")))
    registration = sign_registration(
        verifier, attested, chain_id=world_w3.eth.chain_id, contract=contract.address
    )
    return submit_registration(admin, contract, registration)


@contextmanager
def chaos_world(
    workdir: Path,
    *,
    enclaves: int = 2,
    anvil_args: tuple[str, ...] = (),
    enclave_args: tuple[str, ...] = (),
) -> Iterator[World]:
    """Start anvil and `enclaves` servers (`verinfer serve ... *enclave_args`), deploy, approve, register them
    all; stop everything on exit.

    Setup runs with automine (fast); the chaos run then switches it off and mines with its own Miner.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    with ExitStack() as stack:
        anvil_url = stack.enter_context(running_anvil(*anvil_args))
        urls = [
            stack.enter_context(
                running_server(
                    "--nsm", "sim", "--pki-dir", str(pki), *enclave_args, log=workdir / f"enclave-{index}.log"
                )
            )
            for index in range(enclaves)
        ]
        w3 = connect(anvil_url)
        admin = TxSender(w3, Account.from_key(ANVIL_KEYS[ADMIN]))
        verifier = Account.from_key(ANVIL_KEYS[VERIFIER])
        contract = deploy_verifier(admin)
        first = attest_enclave(urls[0], Policy(root=TrustedRoot.from_file(pki / "root.pem")))
        served = httpx.get(f"{urls[0]}/models").json()["models"]
        models = {m["name"]: bytes.fromhex(m["sha256"]) for m in served}
        configure(
            admin,
            contract,
            images=[image_id(dict(first.pcrs))],
            models=served_approvals(served),
            attestation_verifiers=[verifier.address],
        )
        addresses = [_register(w3, admin, contract, url, verifier=verifier, pki=pki) for url in urls]
        parts = urlsplit(anvil_url)
        proxy = RpcProxy(parts.hostname or "127.0.0.1", parts.port or 8545).start()
        stack.callback(proxy.close)
        yield World(
            anvil_url=anvil_url,
            proxy=proxy,
            w3=w3,
            admin=admin,
            verifier_key=verifier,
            user=Account.from_key(ANVIL_KEYS[USER]),
            contract=contract,
            models=models,
            enclaves=urls,
            enclave_addresses=addresses,
            workdir=workdir,
            relay_accounts=[Account.from_key(ANVIL_KEYS[k]) for k in RELAY_KEYS],
        )
