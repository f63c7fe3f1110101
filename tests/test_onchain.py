"""protocol.onchain: the two rules that bind a receipt to an on-chain request, against eth-abi's encoder."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from hypothesis import given
from hypothesis import strategies as st

from protocol.hashing import keccak256
from protocol.manifest import load_manifest
from protocol.onchain import fulfilment_id, output_layout

ADDRESSES = st.binary(min_size=20, max_size=20)


@given(st.binary(min_size=32, max_size=32), ADDRESSES)
def test_fulfilment_id_is_abi_encode_of_request_and_fulfiller(request_id: bytes, fulfiller: bytes) -> None:
    expected = keccak256(encode(["bytes32", "address"], [request_id, fulfiller]))
    assert fulfilment_id(request_id, fulfiller) == expected
    assert fulfilment_id(request_id, "0x" + fulfiller.hex()) == expected


def test_fulfilment_id_refuses_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        fulfilment_id(bytes(31), bytes(20))
    with pytest.raises(ValueError):
        fulfilment_id(bytes(32), bytes(19))


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.sampled_from(["float32", "int64", "uint8"])),
        min_size=1,
        max_size=5,
    )
)
def test_output_layout_is_count_then_name_and_dtype(outputs: list[tuple[str, str]]) -> None:
    codes = {"float32": 1, "uint8": 2, "int64": 7}
    body = b"".join(bytes((len(n.encode()),)) + n.encode() + bytes((codes[d],)) for n, d in outputs)
    assert output_layout(outputs) == keccak256(bytes((len(outputs),)) + body)


def test_layouts_differ_for_a_subset_or_reordering() -> None:
    lenet = next(m for m in load_manifest("models").models.values() if len(m.outputs) > 1)
    full = [(t.name, t.dtype) for t in lenet.outputs]
    assert output_layout(full) != output_layout(full[:1])
    assert output_layout(full) != output_layout(list(reversed(full)))


def test_output_layout_refuses_empty_and_overlong() -> None:
    with pytest.raises(ValueError):
        output_layout([])
    with pytest.raises(ValueError):
        output_layout([("x" * 256, "float32")])
