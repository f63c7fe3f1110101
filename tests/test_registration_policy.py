"""Registration verifies attestations under the caller's whole policy (issue 11: the policy was rebuilt by
hand, dropping fields such as expected_public_key and expected_user_data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eth_account import Account

from attestation import Policy, TrustedRoot
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki
from enclave.signer import EnclaveKey
from protocol.hashing import keccak256
from relay.registration import (
    NO_ENCRYPTION_KEY,
    Registration,
    RegistrationError,
    attest_enclave,
    check_attestation,
    sign_registration,
)

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_expected_public_key_and_user_data_are_enforced(server: str, server_pki: Path) -> None:
    root = TrustedRoot.from_file(server_pki / "root.pem")
    attested = attest_enclave(server, Policy(root=root))
    assert attested.public_key is not None and attested.user_data is not None
    pinned = Policy(root=root, expected_public_key=attested.public_key, expected_user_data=attested.user_data)
    assert attest_enclave(server, pinned).public_key == attested.public_key
    with pytest.raises(RegistrationError, match="public_key"):
        attest_enclave(server, Policy(root=root, expected_public_key=bytes(64)))
    with pytest.raises(RegistrationError, match="user_data"):
        attest_enclave(server, Policy(root=root, expected_user_data=b"another manifest"))


@pytest.mark.parametrize(
    ("user_data", "key"),
    [
        (bytes(range(32)), NO_ENCRYPTION_KEY),  # a document from before sealing: nothing can be sealed to it
        (bytes(range(32)) + b"\x07" * 32, b"\x07" * 32),  # manifest digest || X25519 key
    ],
)
def test_the_registered_encryption_key_is_the_attested_one(
    sim_device: SimulatedNsmDevice, sim_pki: SimulatorPki, user_data: bytes, key: bytes
) -> None:
    nonce = os.urandom(32)
    document = sim_device.sign_document(user_data, nonce, EnclaveKey().public_key64)
    attested = check_attestation(document, Policy(root=sim_pki.root), nonce, "a test document")
    registration = sign_registration(Account.create(), attested, chain_id=1, contract=CONTRACT)
    assert registration.encryption_key == key
    assert registration.user_data_hash == keccak256(user_data)
    assert Registration.from_json(registration.to_json()) == registration


@pytest.mark.parametrize("user_data", [None, b"", bytes(31), bytes(33), bytes(63), bytes(65), bytes(96)])
def test_user_data_of_another_size_is_refused(
    sim_device: SimulatedNsmDevice, sim_pki: SimulatorPki, user_data: bytes | None
) -> None:
    nonce = os.urandom(32)
    document = sim_device.sign_document(user_data, nonce, EnclaveKey().public_key64)
    with pytest.raises(RegistrationError, match="user_data"):
        check_attestation(document, Policy(root=sim_pki.root), nonce, "a test document")
