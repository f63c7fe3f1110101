"""Request tensors: JSON data to validated numpy arrays in the model's declared order.

Validation turns anything the model cannot take (wrong names, shapes, dtypes, non-numbers, non-finite or
out-of-range values, ragged lists) into a RequestError before any runtime sees it. The enclave uses it on
every request; a verifier uses it to recompute inputHash from the request it sent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from .errors import RequestError, bad_request
from .manifest import ModelEntry, TensorSpec
from .tensors import BY_V2

MAX_BATCH_ELEMENTS = 1 << 22
# What numpy says when a float input exceeds the model's float type; the value is refused as invalid_value.
OVERFLOW_WARNING = "overflow encountered in cast"
# Where a tensor's data is sent outside the JSON (KServe's binary tensor data extension, enclave/kserve.py):
# given the input's spec and its JSON object, its raw bytes, or None when its data is in the JSON.
RawData = Callable[[TensorSpec, dict[str, Any]], bytes | None]


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or the 400 every route gives for one that is not."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"body is not valid JSON: {exc}") from exc


def contains_bool(data: Any) -> bool:
    """Whether nested lists hold a JSON boolean anywhere: numpy would silently read true as 1.

    Costs about as much as building the array, so callers that have the JSON text skip it when the text
    has no `true`/`false` token at all (`may_hold_bools`).
    """
    level = data if isinstance(data, list) else [data]
    while any(type(item) is list for item in level):
        level = list(itertools.chain.from_iterable(i if type(i) is list else (i,) for i in level))
    return bool in set(map(type, level))


def may_hold_bools(body: bytes) -> bool:
    return b"true" in body or b"false" in body


def to_array(
    spec: TensorSpec,
    data: Any,
    shape: Sequence[int] | None = None,
    *,
    max_elements: int = MAX_BATCH_ELEMENTS,
    check_bools: bool = True,
) -> np.ndarray:
    """Convert JSON data to the tensor `spec` describes, or raise a 400 naming what is wrong."""
    if shape is not None:
        _check_elements(spec, shape, max_elements)
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise bad_request(
            "invalid_tensor", f"{spec.name}: data is not a rectangular array of numbers"
        ) from exc
    if raw.dtype.kind not in "iuf" or raw.dtype == np.bool_ or (check_bools and contains_bool(data)):
        raise bad_request("invalid_dtype", f"{spec.name}: expected numbers of type {spec.dtype.name}")
    if raw.size > max_elements:
        raise bad_request("tensor_too_large", f"{spec.name}: more than {max_elements} elements")
    if spec.dtype.numpy.kind == "f":
        # No np.errstate around the cast: entering and leaving it costs ~14k instructions, 2% of a signed
        # inference. An overflow becomes inf and is refused just below; numpy's RuntimeWarning for it is
        # silenced by the server (OVERFLOW_WARNING) and is harmless elsewhere.
        array = raw.astype(spec.dtype.numpy)
        if not np.isfinite(array).all():  # one check on the hot path; work out which problem only on failure
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                raise _not_finite(spec)
            raise bad_request("invalid_value", f"{spec.name}: values exceed the range of {spec.dtype.name}")
    elif spec.dtype.numpy == np.bool_:
        array = _bools(spec, raw)
    else:
        info = np.iinfo(spec.dtype.numpy)
        wanted = f"{spec.name}: expected integers of type {spec.dtype.name}"
        if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
            raise bad_request("invalid_dtype", wanted)
        if raw.dtype.kind == "f" and raw.size and np.abs(raw).max() >= _FLOAT_EXACT:
            raw = _exact_integers(spec, data, info)
        elif raw.size and _out_of_range(raw, info):
            raise bad_request("invalid_value", f"{spec.name}: values exceed the range of {spec.dtype.name}")
        array = raw.astype(spec.dtype.numpy)
    if shape is not None:
        if array.size != math.prod(shape):
            raise bad_request(
                "invalid_shape", f"{spec.name}: {array.size} values do not fill shape {list(shape)}"
            )
        array = array.reshape(shape)
    check_shape(spec, array.shape)
    return np.ascontiguousarray(array)


def _bools(spec: TensorSpec, raw: np.ndarray) -> np.ndarray:
    """A BOOL tensor from the JSON numbers 0 and 1 (JSON true/false are refused above, as everywhere):
    anything else is refused rather than read as numpy would, where every non-zero number is true."""
    if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
        raise bad_request("invalid_dtype", f"{spec.name}: expected 0 or 1 for type {spec.dtype.name}")
    if raw.size and ((raw != 0) & (raw != 1)).any():
        raise bad_request("invalid_value", f"{spec.name}: values of type {spec.dtype.name} must be 0 or 1")
    return raw.astype(np.bool_)


def from_raw(spec: TensorSpec, data: bytes, shape: Sequence[int], *, max_elements: int) -> np.ndarray:
    """The tensor `spec` describes from raw little-endian row-major bytes (KServe's binary tensor data),
    under the same rules as JSON data: element limit, exact size, finite floats, declared shape."""
    _check_elements(spec, shape, max_elements)
    expected = math.prod(shape) * spec.dtype.numpy.itemsize
    if len(data) != expected:
        raise bad_request(
            "invalid_binary_size",
            f"{spec.name}: {len(data)} bytes of binary data, but shape {list(shape)} of "
            f"{spec.dtype.name} takes {expected}",
        )
    check_shape(spec, tuple(shape))
    array = np.frombuffer(data, dtype=spec.dtype.numpy).reshape(shape)
    kind = spec.dtype.numpy.kind
    if kind == "f" and not np.isfinite(array).all():
        raise _not_finite(spec)
    if kind == "b" and np.frombuffer(data, dtype=np.uint8).max() > 1:
        raise bad_request("invalid_value", f"{spec.name}: a BOOL element is one byte, 0 or 1")
    return array


def _check_elements(spec: TensorSpec, shape: Sequence[int], max_elements: int) -> None:
    if math.prod(shape) > max_elements:  # Python ints: no overflow, checked before anything is built
        raise bad_request("tensor_too_large", f"{spec.name}: shape has more than {max_elements} elements")


def _not_finite(spec: TensorSpec) -> RequestError:
    return bad_request("invalid_value", f"{spec.name}: values must be finite")


_FLOAT_EXACT = 2.0**53  # float64 holds every integer below this exactly


def _exact_integers(spec: TensorSpec, data: Any, info: np.iinfo) -> np.ndarray:
    """Integers that numpy read as float64 (big ones mixed with small or negative ones: 2**63 + 1 next to 0),
    where float64 would round them: read again as Python integers, exactly, and range-checked."""
    exact = np.array(data, dtype=object)
    values = [int(v) for v in exact.ravel()]  # already known to be integral numbers
    if min(values) < info.min or max(values) > info.max:
        raise bad_request("invalid_value", f"{spec.name}: values exceed the range of {spec.dtype.name}")
    return np.array(values, dtype=spec.dtype.numpy).reshape(exact.shape)


def _out_of_range(raw: np.ndarray, info: np.iinfo) -> bool:
    if raw.dtype.kind == "f":
        # numpy turns big integers mixed with small ones into float64; compare with the exact power-of-two
        # bounds, because at float precision 2**63 equals int64's maximum.
        return bool(raw.min() < float(info.min) or raw.max() >= float(info.max + 1))
    return bool(raw.min() < info.min or raw.max() > info.max)


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    expected = list(spec.shape)
    if len(shape) != len(expected) or any(e not in (-1, a) for e, a in zip(expected, shape, strict=True)):
        shown = ["N" if e == -1 else e for e in expected]
        raise bad_request("invalid_shape", f"{spec.name}: shape {list(shape)} does not match {shown}")
    if 0 in shape:
        raise bad_request("invalid_shape", f"{spec.name}: empty tensors are not accepted")


def parse_named_tensor(
    entry: ModelEntry,
    item: Any,
    *,
    v2: bool,
    max_elements: int = MAX_BATCH_ELEMENTS,
    check_bools: bool = True,
    raw: RawData | None = None,
) -> tuple[TensorSpec, np.ndarray]:
    """One tensor object: {"name", "data", "shape"?, "datatype"?}; V2 requires shape and datatype. With
    `raw`, a tensor whose data `raw` supplies (binary tensor data) has no "data" in its JSON."""
    if not isinstance(item, dict) or "name" not in item or ("data" not in item and raw is None):
        raise bad_request("missing_field", "each input tensor needs 'name' and 'data'")
    specs = {spec.name: spec for spec in entry.inputs}
    spec = specs.get(item["name"]) if isinstance(item["name"], str) else None
    if spec is None:
        raise bad_request(
            "unknown_input", f"{entry.name} has no input {item['name']!r}; inputs: {list(specs)}"
        )
    shape = item.get("shape")
    if v2 and ("shape" not in item or "datatype" not in item):
        raise bad_request("missing_field", f"{spec.name}: V2 tensors need 'shape' and 'datatype'")
    datatype = item.get("datatype")
    if "datatype" in item and (not isinstance(datatype, str) or BY_V2.get(datatype) != spec.dtype):
        raise bad_request(
            "invalid_dtype", f"{spec.name}: datatype must be {spec.dtype.v2}, got {datatype!r:.40}"
        )
    if shape is not None and (
        not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise bad_request("invalid_shape", f"{spec.name}: shape must be a list of non-negative integers")
    data = None if raw is None else raw(spec, item)
    if data is not None:
        if shape is None:
            raise bad_request("missing_field", f"{spec.name}: binary tensor data needs 'shape'")
        return spec, from_raw(spec, data, shape, max_elements=max_elements)
    if "data" not in item:
        raise bad_request("missing_field", f"{spec.name}: the tensor has no 'data' (nor binary data)")
    return spec, to_array(spec, item["data"], shape, max_elements=max_elements, check_bools=check_bools)


def parse_inputs(
    entry: ModelEntry,
    inputs: Any,
    *,
    v2: bool = False,
    max_elements: int = MAX_BATCH_ELEMENTS,
    check_bools: bool = True,
    raw: RawData | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Inputs in the model's declared order: named tensor objects, or a plain nested list for one input.

    `max_elements` bounds the whole request, not each tensor. Pass `check_bools=False` only when the
    request's JSON text holds no boolean at all (`may_hold_bools`). `raw` supplies the data of tensors
    sent as binary data (enclave/kserve.py), asked in the request's order.
    """
    specs = entry.inputs
    budget = max_elements
    if isinstance(inputs, list) and inputs and all(isinstance(i, dict) for i in inputs):
        parsed: dict[str, np.ndarray] = {}
        for item in inputs:
            spec, array = parse_named_tensor(
                entry, item, v2=v2, max_elements=budget, check_bools=check_bools, raw=raw
            )
            if spec.name in parsed:
                raise bad_request("duplicate_input", f"input {spec.name!r} given twice")
            parsed[spec.name] = array
            budget -= array.size
        missing = [s.name for s in specs if s.name not in parsed]
        if missing:
            raise bad_request("missing_input", f"{entry.name} also needs inputs {missing}")
        return [(s.name, parsed[s.name]) for s in specs]
    if v2 or inputs is None:
        raise bad_request("missing_field", "'inputs' must be a list of tensors")
    if len(specs) != 1:
        raise bad_request("invalid_inputs", f"{entry.name} takes several inputs: name each tensor")
    return [(specs[0].name, to_array(specs[0], inputs, max_elements=max_elements, check_bools=check_bools))]
