"""Policy checks on top of a valid chain and signature."""

from __future__ import annotations

from datetime import timedelta

import pytest

from attestation import AttestationError, Policy, verify

from .conftest import BASE_SAMPLE, document_time

DATA = BASE_SAMPLE.read_bytes()
AT = document_time(DATA)
PCR0 = bytes.fromhex(
    "189038eccf28a3a098949e402f3b3d86a876f4915c5b02d546abb5d8c507ceb1755b8192d8cfca66e8f226160ca4c7a6"
)


def code(policy: Policy, at=AT) -> str:
    with pytest.raises(AttestationError) as info:
        verify(DATA, policy, at=at)
    return info.value.code


def test_expected_pcr_subset_passes() -> None:
    assert verify(DATA, Policy(expected_pcrs={0: PCR0}), at=AT).pcrs[0] == PCR0


def test_pcr_mismatch() -> None:
    assert code(Policy(expected_pcrs={0: PCR0, 1: b"\x00" * 48})) == "pcr_mismatch"


def test_expected_pcr_absent_from_the_document() -> None:
    assert code(Policy(expected_pcrs={20: b"\x00" * 48})) == "pcr_mismatch"


def test_stale() -> None:
    assert code(Policy(max_age_s=60), at=AT + timedelta(seconds=61)) == "stale"
    verify(DATA, Policy(max_age_s=60), at=AT + timedelta(seconds=59))


def test_timestamp_in_the_future() -> None:
    assert code(Policy(max_clock_skew_s=1), at=AT - timedelta(seconds=2)) == "timestamp_in_future"


def test_nonce() -> None:
    assert code(Policy(expected_nonce=b"mine")) == "nonce_mismatch"  # document has no nonce


def test_public_key() -> None:
    assert code(Policy(expected_public_key=b"\x00" * 64)) == "public_key_mismatch"
    result = verify(DATA, Policy(), at=AT)
    assert result.public_key is not None
    verify(DATA, Policy(expected_public_key=result.public_key), at=AT)


def test_user_data() -> None:
    assert code(Policy(expected_user_data=b"x")) == "user_data_mismatch"
