"""The canonical tensor encoding that inputHash and outputHash are taken over (docs/PROTOCOL.md).

    encoding  = u8 version (0x01) || u8 count || tensor * count        (tensors in the model's declared order)
    tensor    = u8 len(name) || name (UTF-8) || u8 dtype || u8 rank || u32 BE dim * rank || data
    data      = the elements in row-major order, each little-endian, prod(dims) * size(dtype) bytes

dtype codes are ONNX TensorProto's. Header integers are big-endian (cheap to read in Solidity); element
data is little-endian, so a C-contiguous numpy array is hashed without conversion.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ProtocolError

ENCODING_VERSION = 1
MAX_TENSORS = 255
MAX_RANK = 255


class TensorEncodingError(ProtocolError):
    """Bytes that are not exactly one canonical tensor encoding, or JSON tensors that cannot become one."""


@dataclass(frozen=True, slots=True)
class DType:
    code: int  # ONNX TensorProto.DataType
    numpy: np.dtype
    v2: str  # KServe Open Inference Protocol datatype
    name: str


DTYPES: tuple[DType, ...] = (
    DType(1, np.dtype("<f4"), "FP32", "float32"),
    DType(2, np.dtype("u1"), "UINT8", "uint8"),
    DType(3, np.dtype("i1"), "INT8", "int8"),
    DType(4, np.dtype("<u2"), "UINT16", "uint16"),
    DType(5, np.dtype("<i2"), "INT16", "int16"),
    DType(6, np.dtype("<i4"), "INT32", "int32"),
    DType(7, np.dtype("<i8"), "INT64", "int64"),
    DType(9, np.dtype("?"), "BOOL", "bool"),
    DType(10, np.dtype("<f2"), "FP16", "float16"),
    DType(11, np.dtype("<f8"), "FP64", "float64"),
    DType(12, np.dtype("<u4"), "UINT32", "uint32"),
    DType(13, np.dtype("<u8"), "UINT64", "uint64"),
)
BY_NAME = {d.name: d for d in DTYPES}
BY_V2 = {d.v2: d for d in DTYPES}
BY_CODE = {d.code: d for d in DTYPES}
_BY_KIND = {(d.numpy.kind, d.numpy.itemsize): d for d in DTYPES}  # byte order does not matter


def dtype_of(array: np.ndarray) -> DType:
    found = _BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if found is None:
        raise ValueError(f"unsupported tensor dtype {array.dtype}")
    return found


@lru_cache(maxsize=4096)
def _header(name: str, code: int, shape: tuple[int, ...]) -> bytes:
    """Everything before the data; the same few (name, dtype, shape) recur on every request."""
    raw_name = name.encode("utf-8")
    if len(raw_name) > 255 or len(shape) > MAX_RANK:
        raise ValueError("tensor name longer than 255 bytes or rank above 255")
    dims = struct.pack(f">{len(shape)}I", *shape)
    return bytes((len(raw_name),)) + raw_name + bytes((code, len(shape))) + dims


def encode_tensor(name: str, array: np.ndarray) -> bytes:
    dtype = dtype_of(array)
    if array.dtype.byteorder == ">" or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype.numpy)
    return _header(name, dtype.code, array.shape) + array.tobytes()


def encode_tensors(tensors: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """The canonical encoding of named tensors, in the given (model-declared) order."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"at most {MAX_TENSORS} tensors")
    return bytes((ENCODING_VERSION, len(tensors))) + b"".join(encode_tensor(n, a) for n, a in tensors)


def decode_tensors(data: bytes) -> list[tuple[str, np.ndarray]]:
    """Inverse of encode_tensors; raises TensorEncodingError (a ProtocolError, so a ValueError) on anything
    that is not exactly one encoding."""
    if len(data) < 2 or data[0] != ENCODING_VERSION:
        raise TensorEncodingError("not a version 1 tensor encoding")
    position, tensors = 2, []
    for _ in range(data[1]):
        if position >= len(data):
            raise TensorEncodingError("truncated tensor header")
        name_length = data[position]
        name_end = position + 1 + name_length
        if name_end + 2 > len(data):
            raise TensorEncodingError("truncated tensor header")
        try:
            name = data[position + 1 : name_end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TensorEncodingError(f"tensor name is not UTF-8: {exc}") from exc
        code, rank = data[name_end], data[name_end + 1]
        dims_end = name_end + 2 + 4 * rank
        if code not in BY_CODE or dims_end > len(data):
            raise TensorEncodingError("unknown dtype or truncated shape")
        shape = struct.unpack_from(f">{rank}I", data, name_end + 2)
        dtype = BY_CODE[code].numpy
        count = math.prod(shape)  # exact: a fixed-width product could wrap around to a small size
        size = count * dtype.itemsize
        if dims_end + size > len(data):
            raise TensorEncodingError("truncated tensor data")
        try:
            array = np.frombuffer(data, dtype=dtype, count=count, offset=dims_end).reshape(shape)
        except ValueError as exc:  # numpy's own limits: more than 64 dimensions, or too large a shape
            raise TensorEncodingError(f"shape {shape} is not representable: {exc}") from exc
        tensors.append((name, array))
        position = dims_end + size
    if position != len(data):
        raise TensorEncodingError("trailing bytes after the last tensor")
    return tensors


def tensors_from_json(items: Any, what: str = "tensor") -> list[tuple[str, np.ndarray]]:
    """Named arrays from tensors that say everything about themselves, as /infer and V2 answers (and V2
    requests) carry them: {name, datatype (V2 name), shape, data}, in the given order. The one reader
    used wherever a hash is recomputed from JSON (the offline verifier, the relay)."""
    if not isinstance(items, list):
        raise TensorEncodingError(f"{what}s must be a list of tensors")
    tensors = []
    for item in items:
        dtype = BY_V2.get(str(item.get("datatype"))) if isinstance(item, dict) else None
        if dtype is None:
            raise TensorEncodingError(f"{what} tensor without a known datatype: {item!r:.80}")
        name = item.get("name")
        if not isinstance(name, str):
            raise TensorEncodingError(f"{what} tensor without a name: {item!r:.80}")
        try:
            array = np.asarray(item["data"], dtype=dtype.numpy).reshape(item["shape"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise TensorEncodingError(f"{what} tensor {name!r:.40} does not encode: {exc}") from exc
        tensors.append((name, array))
    return tensors
