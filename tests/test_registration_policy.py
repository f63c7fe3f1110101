"""Registration verifies attestations under the caller's whole policy (issue 11: the policy was rebuilt by
hand, dropping fields such as expected_public_key and expected_user_data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation import Policy, TrustedRoot
from relay.registration import RegistrationError, attest_enclave


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
