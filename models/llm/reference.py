"""A float64 numpy forward pass of the GGUF llama, from gguf's own dequantisation: the converter's oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from .gguf_read import GgufModel

F64 = np.ndarray[Any, np.dtype[np.float64]]


def dequant(m: GgufModel, name: str) -> np.ndarray[Any, Any]:
    """gguf's dequantisation of one tensor as float32 [N, K] (or [K] for 1-D)."""
    t = m.tensors[name]
    w = dequantize(t.raw, GGMLQuantizationType[t.qtype]).astype(np.float32)
    return w.reshape(-1) if t.rows == 1 else w.reshape(t.rows, t.cols)


def _mm(x: F64, w: np.ndarray[Any, Any]) -> F64:
    """x @ w.T in float64; weights stay float32 in memory (a contiguous cast per call, BLAS reads w.T)."""
    out: F64 = x @ w.astype(np.float64).T
    return out


class Reference:
    """llama.cpp semantics: RMSNorm, rope on adjacent pairs (GGUF Q/K rows), GQA, SwiGLU, tied head."""

    def __init__(self, m: GgufModel) -> None:
        self.n_layer = int(m.hparam("block_count"))
        self.n_head = int(m.hparam("attention.head_count"))
        self.n_kv = int(m.hparam("attention.head_count_kv"))
        hidden = int(m.hparam("embedding_length"))
        self.head = hidden // self.n_head
        self.eps = float(m.hparam("attention.layer_norm_rms_epsilon"))
        theta = float(m.meta.get("llama.rope.freq_base", 10000.0))
        self.inv_freq = theta ** (-np.arange(0, self.head, 2, dtype=np.float64) / self.head)
        self.embed = dequant(m, "token_embd.weight")
        names = (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
        self.layers = [{n: dequant(m, f"blk.{i}.{n}.weight") for n in names} for i in range(self.n_layer)]
        self.out_norm = dequant(m, "output_norm.weight")
        self.cache: list[tuple[F64, F64]] = []

    def _norm(self, x: F64, g: np.ndarray[Any, Any]) -> F64:
        out: F64 = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g.astype(np.float64)
        return out

    def _rope(self, x: F64, pos: np.ndarray[Any, Any]) -> F64:
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]  # [S, head/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def reset(self) -> None:
        self.cache = []

    def forward(self, ids: list[int]) -> F64:
        """Logits [len(ids), V] for ids appended after the cached tokens."""
        past = self.cache[0][0].shape[0] if self.cache else 0
        s = len(ids)
        pos = np.arange(past, past + s)
        h: F64 = self.embed[np.asarray(ids)].astype(np.float64)
        rep = self.n_head // self.n_kv
        mask = np.triu(np.full((s, past + s), -np.inf), k=past + 1)
        new_cache: list[tuple[F64, F64]] = []
        for i, w in enumerate(self.layers):
            x = self._norm(h, w["attn_norm"])
            q = self._rope((_mm(x, w["attn_q"])).reshape(s, self.n_head, self.head), pos)
            k = self._rope((_mm(x, w["attn_k"])).reshape(s, self.n_kv, self.head), pos)
            v = (_mm(x, w["attn_v"])).reshape(s, self.n_kv, self.head)
            if self.cache:
                k = np.concatenate([self.cache[i][0], k])
                v = np.concatenate([self.cache[i][1], v])
            new_cache.append((k, v))
            kk = np.repeat(k, rep, axis=1)  # kv head j serves query heads j*rep .. j*rep+rep-1
            vv = np.repeat(v, rep, axis=1)
            sc = np.einsum("shd,thd->hst", q, kk) / np.sqrt(self.head) + mask[None]
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            a = np.einsum("hst,thd->shd", sc, vv).reshape(s, -1)
            h = h + _mm(a, w["attn_output"])
            x = self._norm(h, w["ffn_norm"])
            gt = _mm(x, w["ffn_gate"])
            up = _mm(x, w["ffn_up"])
            h = h + _mm(gt / (1.0 + np.exp(-gt)) * up, w["ffn_down"])
        self.cache = new_cache
        out: F64 = _mm(self._norm(h, self.out_norm), self.embed)
        return out

    def greedy(self, prompt: list[int], n: int) -> tuple[list[int], F64]:
        """n greedy tokens after prompt, and the prompt's last-position logits."""
        self.reset()
        logits = self.forward(prompt)
        first = logits[-1].copy()
        toks: list[int] = []
        for _ in range(n):
            t = int(np.argmax(logits[-1]))
            toks.append(t)
            logits = self.forward([t])
        return toks, first
