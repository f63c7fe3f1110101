"""The strict CBOR decoder agrees with cbor2 on what both accept, and rejects what it must."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import cbor

keys = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.binary(max_size=64),
        st.text(max_size=32),
    ),
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)


@given(values)
def test_decodes_what_cbor2_encodes(value: object) -> None:
    assert cbor.loads(cbor2.dumps(value)) == value


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_cbor_error(data: bytes) -> None:
    with contextlib.suppress(cbor.CborError):
        cbor.loads(data)


@given(values)
def test_agrees_with_cbor2_on_indefinite_maps(value: object) -> None:
    mapping = {"k": value, 1: b"x"}
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in mapping.items())
    assert cbor.loads(b"\xbf" + body + b"\xff") == mapping


@given(st.integers(0, 2**64 - 1))
def test_head_is_the_shortest_encoding(n: int) -> None:
    assert cbor.head(0, n) == cbor2.dumps(n)


def test_indefinite_strings_and_arrays() -> None:
    assert cbor.loads(bytes.fromhex("5f42010243030405ff")) == b"\x01\x02\x03\x04\x05"
    assert cbor.loads(bytes.fromhex("7f657374726561646d696e67ff")) == "streaming"
    assert cbor.loads(bytes.fromhex("9f018202039f0405ffff")) == [1, [2, 3], [4, 5]]


def test_tag_is_kept_for_the_caller() -> None:
    assert cbor.loads(bytes.fromhex("d24101")) == cbor.Tagged(18, b"\x01")


@pytest.mark.parametrize(
    ("hex_input", "message"),
    [
        ("a2616101616102", "duplicate map key"),
        ("bf616101616102ff", "duplicate map key"),
        ("f93c00", "float"),
        ("fb3ff0000000000000", "float"),
        ("0001", "trailing"),
        ("5a00000010", "runs past the end"),
        ("9b00000000ffffffff", "claims"),
        ("1c", "reserved"),
        ("ff", "break"),
        ("62c328", "UTF-8"),
        ("5f4101", "unterminated"),
        ("5f6161ff", "wrong type"),
        ("bf6161ff", "ends after a key"),
        ("a182010203", "unsupported type"),
        ("", "end of input"),
        ("3f", "indefinite"),
    ],
)
def test_rejects(hex_input: str, message: str) -> None:
    with pytest.raises(cbor.CborError, match=message):
        cbor.loads(bytes.fromhex(hex_input))


def test_nesting_is_bounded() -> None:
    with pytest.raises(cbor.CborError, match="nesting"):
        cbor.loads(b"\x81" * 100 + b"\x00")
