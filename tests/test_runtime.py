"""Input conversion at the edges of each dtype: nothing is silently wrapped, rounded or truncated."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.errors import RequestError
from protocol.inputs import to_array
from protocol.manifest import TensorSpec
from protocol.tensors import BY_NAME

INT64 = TensorSpec("x", BY_NAME["int64"], (-1,))
INT8 = TensorSpec("x", BY_NAME["int8"], (-1,))
FLOAT32 = TensorSpec("x", BY_NAME["float32"], (-1,))


@pytest.mark.parametrize(
    ("spec", "data", "expected"),
    [
        (INT64, [2**63 - 1, 0], [2**63 - 1, 0]),
        (INT64, [-(2**63), 5], [-(2**63), 5]),
        (INT64, [3.0, 4], [3, 4]),
        (INT8, [127, -128], [127, -128]),
        (FLOAT32, [1, 2.5], [1.0, 2.5]),
        (FLOAT32, [3.4e38], [3.4e38]),
    ],
)
def test_accepted(spec: TensorSpec, data: list, expected: list) -> None:
    array = to_array(spec, data)
    assert array.dtype == spec.dtype.numpy
    assert array.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("spec", "data", "code"),
    [
        (INT64, [2**63], "invalid_value"),
        (INT64, [2**63, 2], "invalid_value"),  # numpy makes this float64, where 2**63 == int64 max
        (INT64, [2**64 - 1], "invalid_value"),
        (INT64, [-(2**63) - 1], "invalid_dtype"),
        (INT64, [1.5], "invalid_dtype"),
        (INT64, [1e30], "invalid_value"),
        (INT8, [128], "invalid_value"),
        (INT8, [-129, 0], "invalid_value"),
        (FLOAT32, [3.5e38], "invalid_value"),
        (FLOAT32, [float("nan")], "invalid_value"),
        (FLOAT32, [float("inf")], "invalid_value"),
    ],
)
def test_refused(spec: TensorSpec, data: list, code: str) -> None:
    with pytest.raises(RequestError) as info:
        to_array(spec, data)
    assert info.value.code == code and info.value.status == 400


def test_empty_is_a_shape_error() -> None:
    with pytest.raises(RequestError) as info:
        to_array(INT64, np.array([], dtype=np.int64).tolist())
    assert info.value.code == "invalid_shape"
