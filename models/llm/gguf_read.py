"""Read a llama GGUF into plain numpy arrays, keeping the quantised blocks as they are (no requantisation)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

SUPPORTED_ARCHS = ("llama",)
SUPPORTED_QTYPES = ("F32", "F16", "Q4_1", "Q8_0")
QK = 32  # elements per quant block (Q4_1, Q8_0)


class UnsupportedModelError(ValueError):
    """The GGUF uses an architecture or tensor type this converter does not handle."""


@dataclass(frozen=True)
class Tensor:
    """One GGUF tensor: `raw` is the file's bytes reshaped to [rows, bytes_per_row] (or the float array)."""

    name: str
    qtype: str
    rows: int  # output features (N)
    cols: int  # input features (K); 1-D tensors have rows == 1
    raw: np.ndarray[Any, Any]


@dataclass
class GgufModel:
    """Metadata and tensors of a llama GGUF."""

    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    sha256: str
    tokens: list[str] = field(default_factory=list)
    token_types: list[int] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)

    def hparam(self, key: str) -> Any:
        return self.meta[f"llama.{key}"]


def _field_value(reader: GGUFReader, key: str) -> Any:
    f = reader.fields[key]
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        if f.types[-1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode("utf-8")
    return f.parts[-1].tolist()[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_gguf(path: Path) -> GgufModel:
    """Parse and validate; raises UnsupportedModelError naming what is supported."""
    reader = GGUFReader(path)
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}
    meta = {k: _field_value(reader, k) for k in reader.fields if k not in big and not k.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(
            f"unsupported GGUF architecture {arch!r}: "
            f"this converter supports only {', '.join(SUPPORTED_ARCHS)}"
        )
    tensors: dict[str, Tensor] = {}
    for t in reader.tensors:
        qname = GGMLQuantizationType(t.tensor_type).name
        if qname not in SUPPORTED_QTYPES:
            raise UnsupportedModelError(
                f"unsupported tensor type {qname} for {t.name}: this converter supports only "
                f"{', '.join(SUPPORTED_QTYPES)}"
            )
        shape = [int(s) for s in t.shape]  # GGUF order: [K, N]
        cols = shape[0]
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        raw = np.asarray(t.data)
        raw = raw.reshape(rows, -1) if qname in ("Q4_1", "Q8_0") else raw.reshape(rows, cols)
        tensors[t.name] = Tensor(t.name, qname, rows, cols, raw)
    m = GgufModel(meta=meta, tensors=tensors, sha256=sha256_file(path))
    if "tokenizer.ggml.tokens" in reader.fields:
        m.tokens = _field_value(reader, "tokenizer.ggml.tokens")
        m.token_types = [int(x) for x in _field_value(reader, "tokenizer.ggml.token_type")]
        m.merges = _field_value(reader, "tokenizer.ggml.merges")
    return m


def q4_1_parts(raw: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], ...]:
    """Q4_1 rows -> (d f32 [N,nb], m f32 [N,nb], q uint8 [N,nb,32]); weight = d*q + m, exactly llama.cpp's."""
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(n, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:20]
    # llama.cpp: low nibbles hold elements 0..15, high nibbles 16..31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return d, m, q


def q8_0_parts(raw: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Q8_0 rows -> (d f32 [N,nb], q int8 [N,nb,32]); weight = d*q."""
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(n, -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:34].copy().view(np.int8)
    return d, q
