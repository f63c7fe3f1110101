"""Real AWS Nitro documents: every valid one verifies at its own time, every invalid one is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation import AttestationError, Policy, aws_nitro_root, decode, verify
from attestation.roots import AWS_ROOT_SHA256

from .conftest import FIXTURES, INVALID, VALID, document_time

DEBUG_SAMPLES = {
    "blocky_nitrite__nitro_attestation_debug.cbor",
    "eternis__example_attestation.cbor",
    "evervault__beta_debug-mode-attestation-doc-bytes.raw",
    "evervault__valid-attestation-doc.cbor",
    "sparsity_automata_fork__attestation_1.report",
}
EXPECTED_REJECTIONS = {
    "base_nitro-validator__realAttestation_as_committed_corrupt.cbor": "malformed:cose",
    "blocky_nitrite__selfsigned_attestation.cbor": "malformed:timestamp",
    "marlin_oyster__risczero_testcase_custom.bin": "root_not_trusted",
}


def test_packaged_root_is_the_pinned_aws_root() -> None:
    root = aws_nitro_root()
    assert root.sha256 == AWS_ROOT_SHA256
    assert root.is_aws


def test_fixture_sets_are_complete() -> None:
    assert len(VALID) == 11
    assert {p.name for p in INVALID} == set(EXPECTED_REJECTIONS)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_documents_verify_at_their_own_time(path: Path) -> None:
    data = path.read_bytes()
    result = verify(data, Policy(allow_debug=True), at=document_time(data))
    assert not result.simulated
    assert result.debug == (path.name in DEBUG_SAMPLES)
    assert result.chain_subjects[0] == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert len(result.chain_subjects) == 5
    assert result.pcrs == decode(data).document.pcrs


@pytest.mark.parametrize("path", [p for p in VALID if p.name in DEBUG_SAMPLES], ids=lambda p: p.name)
def test_debug_documents_need_explicit_permission(path: Path) -> None:
    data = path.read_bytes()
    with pytest.raises(AttestationError) as info:
        verify(data, Policy(), at=document_time(data))
    assert info.value.code == "debug_mode"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_documents_are_rejected_today_because_their_leaf_expired(path: Path) -> None:
    with pytest.raises(AttestationError) as info:
        verify(path.read_bytes(), Policy(allow_debug=True))
    assert info.value.code == "cert_expired"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_documents_are_rejected_with_their_reason(path: Path) -> None:
    with pytest.raises(AttestationError) as info:
        verify(path.read_bytes(), Policy(allow_debug=True))
    assert info.value.code == EXPECTED_REJECTIONS[path.name]


def test_large_optional_fields_decode() -> None:
    doc = decode((FIXTURES / "valid" / "blocky_nitrite__nitro_attestation.cbor").read_bytes()).document
    assert doc.public_key is not None and len(doc.public_key) == 1024
    assert doc.user_data is not None and len(doc.user_data) == 1024
    assert doc.nonce is not None and len(doc.nonce) == 1024
