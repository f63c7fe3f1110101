"""The canonical tensor encoding: committed vectors, round trips, and exact layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol.hashing import keccak256
from protocol.tensors import DTYPES, decode_tensors, encode_tensors

VECTORS = json.loads((Path(__file__).parent / "vectors" / "tensors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["label"])
def test_committed_vectors(vector: dict) -> None:
    tensors = [
        (t["name"], np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])) for t in vector["tensors"]
    ]
    encoded = encode_tensors(tensors)
    assert "0x" + encoded.hex() == vector["encoding"]
    assert "0x" + keccak256(encoded).hex() == vector["keccak256"]


def test_layout_by_hand() -> None:
    encoded = encode_tensors([("x", np.array([[1.0, -2.0]], dtype=np.float32))])
    assert encoded == (
        b"\x01\x01"  # version, count
        + b"\x01x"  # name length, name
        + b"\x01\x02"  # dtype FLOAT (ONNX 1), rank 2
        + b"\x00\x00\x00\x01\x00\x00\x00\x02"  # dims, u32 big-endian
        + np.array([1.0, -2.0], dtype="<f4").tobytes()  # data, little-endian
    )


def test_big_endian_arrays_hash_like_little_endian() -> None:
    little = np.array([1, 2, 3], dtype="<i8")
    assert encode_tensors([("a", little)]) == encode_tensors([("a", little.astype(">i8"))])


def test_fortran_order_is_encoded_row_major() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert encode_tensors([("a", np.asfortranarray(array))]) == encode_tensors([("a", array)])


def test_keccak_is_ethereums() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


dtypes = st.sampled_from([d.numpy for d in DTYPES])


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=12),
            dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))),
        ),
        max_size=4,
    )
)
def test_round_trip(tensors: list[tuple[str, np.ndarray]]) -> None:
    decoded = decode_tensors(encode_tensors(tensors))
    assert [n for n, _ in decoded] == [n for n, _ in tensors]
    for (_, got), (_, want) in zip(decoded, tensors, strict=True):
        assert got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want, dtype=want.dtype.newbyteorder("<")).tobytes()


@given(st.binary(max_size=200))
def test_decoder_rejects_garbage_with_value_error(data: bytes) -> None:
    try:
        decoded = decode_tensors(data)
    except ValueError:
        return
    assert encode_tensors(decoded) == data


def test_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        encode_tensors([("s", np.array(["text"]))])


def test_json_tensors_become_named_arrays_or_a_tensor_encoding_error() -> None:
    from protocol.tensors import TensorEncodingError, tensors_from_json

    ((name, array),) = tensors_from_json([{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}])
    assert name == "y" and array.dtype == np.float32 and array.shape == (1, 2)
    for bad in (
        None,
        [{"datatype": "FP32", "shape": [1], "data": [1]}],  # no name: was an AttributeError in verify
        [{"name": "y", "datatype": "XX", "shape": [1], "data": [1]}],
        [{"name": "y", "datatype": "FP32", "shape": [3], "data": [1]}],
        [{"name": "y", "datatype": "FP32", "data": [1]}],
        [{"name": "y", "datatype": "FP32", "shape": [1], "data": ["a"]}],
    ):
        with pytest.raises(TensorEncodingError):
            tensors_from_json(bad)
