"""Big 64-bit integers in JSON inputs are read exactly (protocol/inputs.py).

numpy reads a list mixing integers beyond 2^63 (or 2^53) with small or negative ones as float64, which rounds
them: the enclave would run and sign a value other than the one sent, and a verifier parsing the same way
would "confirm" it. Regression test for the fix found by the binary-data property tests (issue 13).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import RequestError
from protocol.inputs import to_array
from protocol.manifest import TensorSpec
from protocol.tensors import BY_V2

INT64 = TensorSpec("x", BY_V2["INT64"], (-1,))
UINT64 = TensorSpec("x", BY_V2["UINT64"], (-1,))


@pytest.mark.parametrize(
    ("spec", "data"),
    [
        (UINT64, [2**63 + 1, 0]),
        (UINT64, [2**64 - 1, 1]),
        (INT64, [2**62 + 1, -1]),
        (INT64, [-(2**63), 2**63 - 1, 0]),
    ],
)
def test_mixed_big_integers_are_exact(spec: TensorSpec, data: list[int]) -> None:
    assert to_array(spec, data, None).tolist() == data


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=8))
def test_every_int64_list_is_read_exactly(data: list[int]) -> None:
    assert to_array(INT64, data, None).tolist() == data


@pytest.mark.parametrize(
    ("spec", "data"), [(UINT64, [2**64, 0]), (INT64, [2**63, -1]), (UINT64, [-1, 2**63])]
)
def test_out_of_range_is_still_refused(spec: TensorSpec, data: list[int]) -> None:
    with pytest.raises(RequestError) as caught:
        to_array(spec, data, None)
    assert caught.value.status == 400  # invalid_value, or invalid_dtype where numpy cannot hold it at all
