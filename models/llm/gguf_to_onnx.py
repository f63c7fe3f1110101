"""`python -m models.llm.gguf_to_onnx GGUF OUTDIR`: a llama GGUF -> model.onnx + genai/tokenizer files.

Torch-free (gguf + onnx + numpy). The output is byte-identical on every build.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import MODEL_NAME
from .gguf_read import GgufModel, UnsupportedModelError, read_gguf
from .onnx_graph_llm import BuildOptions, build_model
from .tokenizer_build import dumps, tokenizer_config, tokenizer_json


def genai_config(m: GgufModel) -> dict[str, Any]:
    """genai_config.json for onnxruntime-genai 0.18 (decoder names as in the SPEC's I/O contract)."""
    hidden = int(m.hparam("embedding_length"))
    n_head = int(m.hparam("attention.head_count"))
    ctx = int(m.hparam("context_length"))
    eos = int(m.meta["tokenizer.ggml.eos_token_id"])
    return {
        "model": {
            "bos_token_id": int(m.meta.get("tokenizer.ggml.bos_token_id", eos)),
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": hidden // n_head,
                "hidden_size": hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": n_head,
                "num_hidden_layers": int(m.hparam("block_count")),
                "num_key_value_heads": int(m.hparam("attention.head_count_kv")),
            },
            "eos_token_id": eos,
            "pad_token_id": int(m.meta.get("tokenizer.ggml.padding_token_id", eos)),
            "type": "llama",
            "vocab_size": len(m.tokens),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": ctx,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def llm_facts(m: GgufModel) -> dict[str, Any]:
    """llm.json: what the server needs without parsing ONNX or GGUF."""
    eos = int(m.meta["tokenizer.ggml.eos_token_id"])
    bos = int(m.meta.get("tokenizer.ggml.bos_token_id", eos))
    return {
        "name": MODEL_NAME,
        "context_length": int(m.hparam("context_length")),
        "vocab_size": len(m.tokens),
        "num_layers": int(m.hparam("block_count")),
        "num_kv_heads": int(m.hparam("attention.head_count_kv")),
        "head_size": int(m.hparam("embedding_length")) // int(m.hparam("attention.head_count")),
        "eos_token_ids": [eos],
        "bos_token": m.tokens[bos],
        "eos_token": m.tokens[eos],
        "add_bos_token": bool(m.meta.get("tokenizer.ggml.add_bos_token", False)),
        "source_gguf_sha256": m.sha256,
    }


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def convert(gguf_path: Path, out_dir: Path, opts: BuildOptions | None = None) -> None:
    """Write model.onnx, genai_config.json, tokenizer(_config).json, chat_template.jinja and llm.json."""
    m = read_gguf(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_json(m)  # validates the tokenizer before the (slower) graph build
    model = build_model(m, opts)
    _write(out_dir / "model.onnx", model.SerializeToString())
    del model
    _write(out_dir / "tokenizer.json", tok.encode())
    _write(out_dir / "tokenizer_config.json", dumps(tokenizer_config(m)).encode())
    _write(out_dir / "genai_config.json", dumps(genai_config(m)).encode())
    _write(out_dir / "llm.json", dumps(llm_facts(m)).encode())
    template = m.meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        _write(out_dir / "chat_template.jinja", template.encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument(
        "--accuracy-level", type=int, default=BuildOptions.accuracy_level, choices=(0, 1, 2, 3, 4)
    )
    ap.add_argument("--full-logits", action="store_true", help="emit logits for every position")
    a = ap.parse_args(argv)
    try:
        convert(
            a.gguf,
            a.out_dir,
            BuildOptions(accuracy_level=a.accuracy_level, last_logits_only=not a.full_logits),
        )
    except UnsupportedModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
