"""Build the decoder ONNX graph (com.microsoft MatMulNBits + GroupQueryAttention) from GGUF quant blocks.

Weights stay exactly the GGUF's: Q4_1 w = d*q + m becomes MatMulNBits' d*(q-8) plus blocksum(x) @ (m + 8d);
the Q8_0 tied table is stored once (q+128): the embedding Gathers from it, the head is an 8-bit MatMulNBits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gguf_read import QK, GgufModel, Tensor, UnsupportedModelError, q4_1_parts, q8_0_parts

MS = "com.microsoft"
OPSET = 21
IR_VERSION = 10
PRODUCER = "verinfer.models.llm"
PRODUCER_VERSION = "1"


@dataclass(frozen=True)
class BuildOptions:
    """Graph choices: GGUF Q/K row order with interleaved rotary; last-position logits.

    accuracy_level 4: MatMulNBits quantises activations to int8 per block (weights stay exactly the GGUF's),
    as llama.cpp does for Q4_1 (Q8_1 activations). It decodes ~1.4x faster than the fp32 path here, and a
    row's result does not depend on how many rows share the batch (MLAS's fp32 path takes a GEMV for one row
    and a GEMM for several, which differ in the last bits), so a completion is the same alone or batched.
    """

    accuracy_level: int = 4
    last_logits_only: bool = True


def pack_nibbles(q: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """[N, nb, 32] values 0..15 -> MatMulNBits B [N, nb, 16]: element 2i low nibble, 2i+1 high nibble."""
    q = q.astype(np.uint8)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4))


class _Graph:
    """Accumulates nodes and initializers in a fixed order, so the output bytes are deterministic."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def init(self, name: str, arr: np.ndarray[Any, Any]) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        self._count += 1
        base = f"{op_type}_{self._count}"
        outs = [f"{base}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, domain=domain, **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]


def _q4_1_linear_weights(g: _Graph, prefix: str, tensors: list[Tensor]) -> tuple[str, str, str, int, int]:
    """Concatenate the rows of Q4_1 tensors sharing one input; returns (B, scales, M', K, N)."""
    ds, ms, qs = [], [], []
    k = tensors[0].cols
    for t in tensors:
        if t.qtype != "Q4_1" or t.cols != k:
            raise UnsupportedModelError(
                f"{t.name}: expected Q4_1 with K={k} for a linear layer (this converter maps linear "
                f"layers from Q4_1 only; F32/Q8_0 are supported for norms and the tied embedding)"
            )
        d, m, q = q4_1_parts(t.raw)
        ds.append(d)
        ms.append(m)
        qs.append(q)
    d = np.concatenate(ds)
    m = np.concatenate(ms)
    q = np.concatenate(qs)
    n = d.shape[0]
    b = g.init(f"{prefix}.qweight", pack_nibbles(q))
    s = g.init(f"{prefix}.scales", d.reshape(-1))
    # MatMulNBits uses zero point 8: d*(q-8); the rest of d*q + m is the per-block constant m + 8d
    mp = g.init(f"{prefix}.block_offset", np.ascontiguousarray((m + np.float32(8) * d).T))
    return b, s, mp, k, n


class _Builder:
    def __init__(self, model: GgufModel, opts: BuildOptions) -> None:
        self.m = model
        self.o = opts
        self.g = _Graph()
        self.shapes: dict[int, str] = {}

    def blocksum(self, x: str, k: int) -> str:
        """ReduceSum of x over 32-wide blocks along the last axis: [B,S,K] -> [B,S,K/32]."""
        if k not in self.shapes:
            shp = [-1, k // QK, QK]
            self.shapes[k] = self.g.init(f"shape.blocks_{k}", np.array(shp, np.int64))
        r = self.g.op1("Reshape", [x, self.shapes[k]])
        return self.g.op1("ReduceSum", [r, "const.axis_last"], keepdims=0)

    def linear(self, x: str, prefix: str, tensors: list[Tensor], bsum: str | None = None) -> tuple[str, str]:
        """Exact Q4_1 linear; returns (y, blocksum(x)) so callers can share the block sums."""
        b, s, mp, k, n = _q4_1_linear_weights(self.g, prefix, tensors)
        y = self.g.op1(
            "MatMulNBits",
            [x, b, s],
            domain=MS,
            K=k,
            N=n,
            bits=4,
            block_size=QK,
            accuracy_level=self.o.accuracy_level,
        )
        if bsum is None:
            bsum = self.blocksum(x, k)
        # activations are 2D [tokens, K] here, so the correction and its Add are one Gemm
        return self.g.op1("Gemm", [bsum, mp, y]), bsum

    def norm_weight(self, name: str) -> str:
        t = self.m.tensors[name]
        if t.qtype not in ("F32", "F16"):
            raise UnsupportedModelError(f"{name}: norm weights must be F32 or F16, got {t.qtype}")
        return self.g.init(name, t.raw.reshape(-1).astype(np.float32))

    def build(self) -> onnx.ModelProto:
        m, g = self.m, self.g
        n_layer = int(m.hparam("block_count"))
        hidden = int(m.hparam("embedding_length"))
        n_head = int(m.hparam("attention.head_count"))
        n_kv = int(m.hparam("attention.head_count_kv"))
        head = hidden // n_head
        eps = float(m.hparam("attention.layer_norm_rms_epsilon"))
        theta = float(m.meta.get("llama.rope.freq_base", 10000.0))
        ctx = int(m.hparam("context_length"))
        rot = int(m.meta.get("llama.rope.dimension_count", head))
        if rot != head:
            raise UnsupportedModelError(f"partial rotary (rope dim {rot} != head {head}) is not supported")
        emb = m.tensors["token_embd.weight"]
        if emb.qtype != "Q8_0" or "output.weight" in m.tensors:
            raise UnsupportedModelError(
                "this converter supports a Q8_0 token_embd.weight tied to the output head only"
            )
        vocab = emb.rows

        g.init("const.axis_last", np.array([-1], np.int64))
        g.init("const.axis_1", np.array([1], np.int64))
        g.init("const.one_i64", np.array(1, np.int64))
        # cos/sin caches [ctx, head/2], float64 math rounded once to float32
        inv = theta ** (-np.arange(0, head, 2, dtype=np.float64) / head)
        ang = np.arange(ctx, dtype=np.float64)[:, None] * inv[None, :]
        cos = g.init("rotary.cos_cache", np.cos(ang).astype(np.float32))
        sin = g.init("rotary.sin_cache", np.sin(ang).astype(np.float32))

        # mask -> seqlens_k (int32 [B]) and total_sequence_length (int32 scalar), genai's convention
        msum = g.op1("ReduceSum", ["attention_mask", "const.axis_1"], keepdims=0)
        seqlens = g.op1("Cast", [g.op1("Sub", [msum, "const.one_i64"])], to=TensorProto.INT32)
        mshape = g.op1("Shape", ["attention_mask"])
        g.init("const.idx1", np.array(1, np.int64))
        total_len = g.op1("Cast", [g.op1("Gather", [mshape, "const.idx1"], axis=0)], to=TensorProto.INT32)

        # The tied Q8_0 table, stored once as q+128 (uint8 [V, K/32, 32]): the output head's 8-bit MatMulNBits
        # weight, and the embedding, (Cast(row) - 128) * scale, which is exactly d*q
        d8, q8 = q8_0_parts(emb.raw)
        nb = hidden // QK
        u = (q8.astype(np.int16) + 128).astype(np.uint8)
        table = g.init("lm_head.qweight", np.ascontiguousarray(u.reshape(vocab, nb, QK)))
        esc = g.init("embed.scales", d8)
        eq = g.op1("Cast", [g.op1("Gather", [table, "input_ids"], axis=0)], to=TensorProto.FLOAT)
        eq = g.op1("Sub", [eq, g.init("const.q8_zero_point", np.array(128, np.float32))])
        es = g.op1("Unsqueeze", [g.op1("Gather", [esc, "input_ids"], axis=0), "const.axis_last"])
        # the residual stream is 2D [tokens, hidden] (so each Q4_1 correction is one Gemm); 3D [B, S, .] only
        # around GroupQueryAttention and before the last-position gather
        h = g.op1(
            "Reshape", [g.op1("Mul", [eq, es]), g.init("shape.hidden", np.array([-1, hidden], np.int64))]
        )
        ishape0 = g.op1("Shape", ["input_ids"])
        bs3 = g.op1("Concat", [ishape0, g.init("const.minus1", np.array([-1], np.int64))], axis=0)

        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
            ),
        ]
        outputs: list[onnx.ValueInfoProto] = []
        split_ffn = g.init("split.ffn", np.array([int(m.hparam("feed_forward_length"))] * 2, np.int64))

        residual: str | None = None
        pending: str | None = None  # output of the previous sub-block, added to residual in the next norm
        for i in range(n_layer):
            p = f"blk.{i}"
            t = m.tensors
            gamma = self.norm_weight(f"{p}.attn_norm.weight")
            if pending is None:
                x = g.op1("SimplifiedLayerNormalization", [h, gamma], axis=-1, epsilon=eps)
                residual = h
            else:
                outs = g.op(
                    "SkipSimplifiedLayerNormalization", [pending, residual or h, gamma], 4, MS, epsilon=eps
                )
                x, residual = outs[0], outs[3]
            qkv, _ = self.linear(
                x,
                f"{p}.attn_qkv",
                [t[f"{p}.attn_q.weight"], t[f"{p}.attn_k.weight"], t[f"{p}.attn_v.weight"]],
            )
            pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
            ok, ov = f"present.{i}.key", f"present.{i}.value"
            for name in (pk, pv):
                inputs.append(
                    helper.make_tensor_value_info(
                        name, TensorProto.FLOAT, ["batch_size", n_kv, "past_sequence_length", head]
                    )
                )
            for name in (ok, ov):
                outputs.append(
                    helper.make_tensor_value_info(
                        name, TensorProto.FLOAT, ["batch_size", n_kv, "total_sequence_length", head]
                    )
                )
            g._count += 1
            gqa = f"GroupQueryAttention_{i}"
            attn = f"{gqa}_out0"
            g.nodes.append(
                helper.make_node(
                    "GroupQueryAttention",
                    [
                        g.op1("Reshape", [qkv, bs3]),
                        "",
                        "",
                        pk,
                        pv,
                        seqlens,
                        total_len,
                        cos,
                        sin,
                    ],
                    [attn, ok, ov],
                    name=gqa,
                    domain=MS,
                    num_heads=n_head,
                    kv_num_heads=n_kv,
                    do_rotary=1,
                    rotary_interleaved=1,
                )
            )
            attn = g.op1("Reshape", [attn, "shape.hidden"])
            o, _ = self.linear(attn, f"{p}.attn_output", [t[f"{p}.attn_output.weight"]])
            gamma2 = self.norm_weight(f"{p}.ffn_norm.weight")
            outs = g.op("SkipSimplifiedLayerNormalization", [o, residual or h, gamma2], 4, MS, epsilon=eps)
            x2, residual = outs[0], outs[3]
            gu, _ = self.linear(x2, f"{p}.ffn_gate_up", [t[f"{p}.ffn_gate.weight"], t[f"{p}.ffn_up.weight"]])
            gate, up = g.op("Split", [gu, split_ffn], 2, axis=-1)
            act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]), up])
            pending, _ = self.linear(act, f"{p}.ffn_down", [t[f"{p}.ffn_down.weight"]])

        gamma_f = self.norm_weight("output_norm.weight")
        xf = g.op(
            "SkipSimplifiedLayerNormalization", [pending or h, residual or h, gamma_f], 1, MS, epsilon=eps
        )[0]
        xf = g.op1(
            "Reshape",
            [xf, g.op1("Concat", [ishape0, g.init("const.hidden1", np.array([hidden], np.int64))], axis=0)],
        )
        if self.o.last_logits_only:
            # row b's last real token in this step: clip(sum(mask_b) - 1 - (T - S), 0, S-1)
            ishape = g.op1("Shape", ["input_ids"])
            s_len = g.op1("Gather", [ishape, "const.idx1"], axis=0)
            past = g.op1("Sub", [g.op1("Gather", [mshape, "const.idx1"], axis=0), s_len])
            idx = g.op1("Sub", [g.op1("Sub", [msum, "const.one_i64"]), past])
            g.init("const.zero_i64", np.array(0, np.int64))
            idx = g.op1("Clip", [idx, "const.zero_i64", g.op1("Sub", [s_len, "const.one_i64"])])
            idx = g.op1("Reshape", [idx, g.init("shape.idx", np.array([-1, 1, 1], np.int64))])
            bshape = g.op1(
                "Concat",
                [
                    g.op1("Gather", [ishape, g.init("const.idx0", np.array([0], np.int64))], axis=0),
                    g.init("const.one_hidden", np.array([1, hidden], np.int64)),
                ],
                axis=0,
            )
            xf = g.op1("GatherElements", [xf, g.op1("Expand", [idx, bshape])], axis=1)
        # tied head: one 8-bit MatMulNBits over the same table, default zero point 128: d*((q+128)-128) = d*q
        s8 = g.init("lm_head.scales", d8.reshape(-1))
        g.nodes.append(
            helper.make_node(
                "MatMulNBits",
                [xf, table, s8],
                ["logits"],
                name="lm_head",
                domain=MS,
                K=hidden,
                N=vocab,
                bits=8,
                block_size=QK,
                accuracy_level=self.o.accuracy_level,
            )
        )
        return self._finish(inputs, outputs, vocab)

    def _finish(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], vocab: int
    ) -> onnx.ModelProto:
        m, g = self.m, self.g
        s_out = 1 if self.o.last_logits_only else "sequence_length"
        outputs.insert(
            0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", s_out, vocab])
        )

        graph = helper.make_graph(g.nodes, "smollm2_decoder", inputs, outputs, initializer=g.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
            producer_name=PRODUCER,
            producer_version=PRODUCER_VERSION,
            ir_version=IR_VERSION,
        )
        model.doc_string = f"converted from GGUF sha256 {m.sha256}"
        return model


def build_model(model: GgufModel, opts: BuildOptions | None = None) -> onnx.ModelProto:
    """The decoder graph for a validated llama GGUF."""
    return _Builder(model, opts or BuildOptions()).build()
