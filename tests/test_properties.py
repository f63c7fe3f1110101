"""Property tests: whatever bytes arrive, verification fails only with the package's own error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import AttestationError, Policy, decode, verify

from .conftest import BASE_SAMPLE, VALID, document_time

SAMPLES = [p.read_bytes() for p in VALID]
AT = document_time(BASE_SAMPLE.read_bytes())
POLICY = Policy(allow_debug=True)


def outcome(data: bytes) -> str:
    try:
        verify(data, POLICY, at=AT)
    except AttestationError as exc:
        return exc.code
    return "verified"


@given(st.binary(max_size=2048))
@settings(max_examples=400)
def test_arbitrary_bytes(data: bytes) -> None:
    assert outcome(data) != "verified"


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(SAMPLES))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        position = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "delete":
            del data[position]
        elif kind == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        else:
            del data[position:]
        if not data:
            data = bytearray(b"\x00")
    return original, bytes(data)


@given(mutated_documents())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_real_documents(pair: tuple[bytes, bytes]) -> None:
    original, mutated = pair
    try:
        at = document_time(original)
        verify(mutated, POLICY, at=at)
    except AttestationError:
        return
    # A mutation may only survive if it did not change what was signed (for example re-chunking).
    assert decode(mutated).cose.payload == decode(original).cose.payload
