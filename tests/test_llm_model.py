"""The converted SmolLM2 ONNX model against a float64 numpy reference of the GGUF (built by `make llm`)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

# models/ is a source root (as mypy_path has it), so the converter package imports as `llm`
_MODELS = str(Path(__file__).resolve().parents[1] / "models")
if _MODELS not in sys.path:
    sys.path.insert(0, _MODELS)

from llm import DEFAULT_GGUF, DEFAULT_OUT, GGUF_SHA256  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (DEFAULT_OUT / "model.onnx").is_file() or not DEFAULT_GGUF.is_file(),
    reason=f"LLM not built ({DEFAULT_OUT}, {DEFAULT_GGUF}): run `make llm` (part of `make setup`)",
)

CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
N_GREEDY = 16
L, KV, HEAD = 30, 3, 64


@pytest.fixture(scope="module")
def gguf_model():
    from llm.gguf_read import read_gguf

    return read_gguf(DEFAULT_GGUF)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(DEFAULT_OUT / "tokenizer.json"))


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    return list(tokenizer.encode(CHAT_PROMPT).ids)


@pytest.fixture(scope="module")
def reference(gguf_model, prompt):
    """(greedy tokens, prompt's last logits) from the float64 reference."""
    from llm.reference import Reference

    ref = Reference(gguf_model)
    toks, first = ref.greedy(prompt, N_GREEDY)
    del ref
    return toks, first


def _session(model: bytes | str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def served():
    """The model as served: MatMulNBits with accuracy_level 4 (int8 activations, exact weights)."""
    return _session(str(DEFAULT_OUT / "model.onnx"))


@pytest.fixture(scope="module")
def session():
    """The same graph and weights with fp32 MatMulNBits compute: checks the graph against the reference."""
    import onnx

    model = onnx.load(str(DEFAULT_OUT / "model.onnx"))
    levels = set()
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                levels.add(attribute.i)
                attribute.i = 0
    assert levels == {4}
    return _session(model.SerializeToString())


def _feeds(
    ids: np.ndarray, mask: np.ndarray, past: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> dict:
    b = ids.shape[0]
    f: dict[str, np.ndarray] = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    for i in range(L):
        k, v = past[i] if past else (np.zeros((b, KV, 0, HEAD), np.float32),) * 2
        f[f"past_key_values.{i}.key"] = k
        f[f"past_key_values.{i}.value"] = v
    return f


def _greedy(session, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    out = session.run(None, _feeds(np.array([prompt]), np.ones((1, len(prompt)))))
    first = out[0][0, -1].copy()
    toks: list[int] = []
    total = len(prompt)
    for _ in range(n):
        t = int(np.argmax(out[0][0, -1]))
        toks.append(t)
        total += 1
        past = [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(L)]
        out = session.run(None, _feeds(np.array([[t]]), np.ones((1, total)), past))
    return toks, first


def test_logits_and_greedy_tokens_match_reference(session, prompt, reference) -> None:
    ref_toks, ref_first = reference
    toks, first = _greedy(session, prompt, N_GREEDY)
    diff = float(np.abs(first.astype(np.float64) - ref_first).max())
    assert diff < 2e-3, f"max |logits - reference| = {diff}"
    assert toks == ref_toks


def test_served_int8_activations_stay_close_to_the_reference(served, session, prompt, reference) -> None:
    """accuracy_level 4 quantises activations as llama.cpp does: logits move a little, the answer does not."""
    ref_toks, ref_first = reference
    toks, first = _greedy(served, prompt, N_GREEDY)
    diff = float(np.abs(first.astype(np.float64) - ref_first).max())
    assert diff < 1.5, f"max |logits - reference| = {diff}"
    assert int(np.argmax(first)) == int(np.argmax(ref_first))
    answer = ref_toks[: ref_toks.index(2) + 1] if 2 in ref_toks else ref_toks[:8]
    assert toks[: len(answer)] == answer


def test_a_row_decodes_the_same_alone_or_in_a_batch(served, prompt) -> None:
    """Batch invariance: a completion must not depend on what else the server is generating."""
    short = prompt[:9]
    ids = np.full((2, len(prompt)), 2)
    mask = np.zeros((2, len(prompt)))
    ids[0], mask[0] = prompt, 1
    ids[1, : len(short)], mask[1, : len(short)] = short, 1
    both = served.run(["logits"], _feeds(ids, mask))[0]
    alone = served.run(["logits"], _feeds(np.array([short]), np.ones((1, len(short)))))[0]
    assert np.array_equal(both[1, 0], alone[0, 0])


def test_batch_right_padded_prefill_picks_each_rows_last_token(session, prompt) -> None:
    """Last-position logits: with right padding, row b's logits are those of its own last real token."""
    short = prompt[:9]
    ids = np.full((2, len(prompt)), 2)
    mask = np.zeros((2, len(prompt)))
    ids[0], mask[0] = prompt, 1
    ids[1, : len(short)], mask[1, : len(short)] = short, 1
    both = session.run(["logits"], _feeds(ids, mask))[0]
    alone = session.run(["logits"], _feeds(np.array([short]), np.ones((1, len(short)))))[0]
    full = session.run(["logits"], _feeds(np.array([prompt]), np.ones((1, len(prompt)))))[0]
    assert both.shape == (2, 1, 49152)
    np.testing.assert_allclose(both[0, 0], full[0, 0], atol=1e-4)
    np.testing.assert_allclose(both[1, 0], alone[0, 0], atol=1e-4)


def _onnx_inits(names: set[str]) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(DEFAULT_OUT / "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}


def _unpack(packed: np.ndarray) -> np.ndarray:
    """MatMulNBits B [N, nb, 16] -> [N, nb*32] values 0..15 (element 2i low nibble, 2i+1 high)."""
    q = np.empty((*packed.shape[:-1], 32), np.uint8)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    return q.reshape(packed.shape[0], -1)


def test_initializers_hold_exactly_the_gguf_weights(gguf_model) -> None:
    from llm.reference import dequant

    p = "blk.3.ffn_down"
    inits = _onnx_inits(
        {
            f"{p}.qweight",
            f"{p}.scales",
            f"{p}.block_offset",
            "embed.scales",
            "lm_head.qweight",
            "lm_head.scales",
        }
    )
    # Q4_1: MatMulNBits' d*(q-8) plus the per-block constant (m + 8d) reproduces d*q + m
    want = dequant(gguf_model, f"{p}.weight")
    n = want.shape[0]
    q = _unpack(inits[f"{p}.qweight"]).astype(np.float64)
    d = np.repeat(inits[f"{p}.scales"].reshape(n, -1).astype(np.float64), 32, axis=1)
    off = np.repeat(inits[f"{p}.block_offset"].T.astype(np.float64), 32, axis=1)
    got = d * (q - 8) + off
    ulp = np.spacing(np.abs(want)).astype(np.float64)
    assert np.all(np.abs(got - want) <= ulp), float(np.max(np.abs(got - want) / ulp))
    # Q8_0 embedding table: Cast(int8) * scale is bitwise gguf's value
    emb = dequant(gguf_model, "token_embd.weight")
    v = emb.shape[0]
    table = inits["lm_head.qweight"].astype(np.float32) - 128  # the tied table, stored once as q + 128
    got_e = (table * inits["embed.scales"][..., None]).reshape(v, -1)
    assert np.array_equal(got_e, emb)
    # tied head: one 8-bit MatMulNBits, d * ((q + 128) - 128) with its default zero point 128 is d*q exactly
    head = inits["lm_head.qweight"].astype(np.float32).reshape(v, -1, 32)
    assert np.array_equal((inits["lm_head.scales"].reshape(v, -1, 1) * (head - 128)).reshape(v, -1), emb)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rebuild_is_byte_identical(tmp_path) -> None:
    import json

    from llm.gguf_to_onnx import convert

    convert(DEFAULT_GGUF, tmp_path)
    manifest = json.loads((DEFAULT_OUT.parent.parent / "manifest.json").read_text())
    pinned = next(m for m in manifest["models"] if m["task"] == "text-generation")["files"]
    built = {path.name for path in tmp_path.iterdir()}
    assert built == set(pinned)  # every file written is served and pinned
    for name, digest in pinned.items():
        assert _sha(tmp_path / name) == digest, f"{name} differs from the sha256 the manifest pins"
        assert _sha(DEFAULT_OUT / name) == digest, name


def test_outputs_describe_the_model(gguf_model) -> None:
    import json

    facts = json.loads((DEFAULT_OUT / "llm.json").read_text())
    assert facts["source_gguf_sha256"] == GGUF_SHA256
    assert facts["eos_token_ids"] == [2] and facts["eos_token"] == "<|im_end|>"
    assert (facts["num_layers"], facts["num_kv_heads"], facts["head_size"]) == (30, 3, 64)
    assert (DEFAULT_OUT / "chat_template.jinja").read_text() == gguf_model.meta["tokenizer.chat_template"]
    cfg = json.loads((DEFAULT_OUT / "genai_config.json").read_text())
    assert cfg["search"]["past_present_share_buffer"] is True


def _tiny_gguf(path: Path, arch: str, qtype: str) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if qtype == "F32":
        w.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    else:
        t = gguf.GGMLQuantizationType[qtype]
        bs, ts = gguf.GGML_QUANT_SIZES[t]
        w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 256 // bs * ts), np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    ("arch", "qtype", "needle"),
    [
        ("gpt2", "F32", "architecture 'gpt2'"),
        ("llama", "Q4_0", "tensor type Q4_0"),
        ("llama", "Q4_K", "tensor type Q4_K"),
    ],
)
def test_unsupported_gguf_is_refused_clearly(tmp_path, arch, qtype, needle, capsys) -> None:
    from llm.gguf_read import UnsupportedModelError, read_gguf
    from llm.gguf_to_onnx import main

    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path, arch, qtype)
    with pytest.raises(UnsupportedModelError, match="supports only") as e:
        read_gguf(path)
    assert needle in str(e.value)
    assert main([str(path), str(tmp_path / "out")]) == 2
    assert "supports only" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_onnxruntime_genai_greedy_matches_the_served_graph(served, prompt) -> None:
    import onnxruntime_genai as og  # type: ignore[import-untyped]

    ref_toks, _ = _greedy(served, prompt, N_GREEDY)
    model = og.Model(str(DEFAULT_OUT))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + N_GREEDY, do_sample=False, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    toks: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        toks.append(int(gen.get_next_tokens()[0]))
    # genai stops at the EOS (<|im_end|>); the plain loop runs on past it
    assert toks and toks == ref_toks[: len(toks)]
    assert len(toks) == N_GREEDY or toks[-1] == 2
    og_tok = og.Tokenizer(model)
    for text in (CHAT_PROMPT, "in 2024, 12 apples cost $3.50"):
        assert [int(x) for x in og_tok.encode(text)] == _tokenizer_ids(text)


def _tokenizer_ids(text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(DEFAULT_OUT / "tokenizer.json")).encode(text).ids)


def test_tokenizer_roundtrip_digits_and_specials(tokenizer) -> None:
    for text in ("Hello, world!", "  two  spaces\n\ttab", "héllo wörld ✓ 日本語", "x = 3.14159 * r**2"):
        assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text
    assert len(tokenizer.encode("2024").ids) == 4
    assert tokenizer.encode("<|im_start|>").ids == [1]
    assert tokenizer.encode("<|im_end|>").ids == [2]
    assert tokenizer.encode("<|endoftext|>").ids == [0]
    assert tokenizer.encode("hi<|im_end|>").ids[-1] == 2
    assert tokenizer.decode([1, 2], skip_special_tokens=True) == ""
