"""BOOL model inputs from JSON: the numbers 0 and 1 only, and every other value a clear 4xx.

Before, any JSON number for a BOOL input reached `np.iinfo(bool)`, which raises ValueError: the enclave
answered 500 to a bad input instead of a 400 (found by the independent JavaScript verifier)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.errors import RequestError
from protocol.inputs import parse_inputs
from protocol.manifest import ModelEntry, TensorSpec
from protocol.tensors import BY_NAME

SPEC = TensorSpec("mask", BY_NAME["bool"], (-1,))
ENTRY = ModelEntry("m", "1", "m.onnx", "00" * 32, "", "", (SPEC,), (SPEC,), {})


def test_zeros_and_ones_are_read_as_bools() -> None:
    for data in ([1, 0, 1], [1.0, 0.0, 1.0]):
        ((name, array),) = parse_inputs(ENTRY, [{"name": "mask", "data": data}])
        assert name == "mask" and array.dtype == np.bool_ and array.tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("data", "code"),
    [([2], "invalid_value"), ([-1], "invalid_value"), ([0.5], "invalid_dtype"), ([True], "invalid_dtype")],
)
def test_anything_else_is_a_clear_refusal(data: list[object], code: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_inputs(ENTRY, [{"name": "mask", "data": data}])
    assert refused.value.status == 400 and refused.value.code == code
