"""A `tokenizers` tokenizer.json from the GGUF's own vocab and merges (llama.cpp's "smollm" pre-tokenizer)."""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .gguf_read import GgufModel, UnsupportedModelError

CONTROL = 3  # llama.cpp token type for control (special) tokens


def build_tokenizer(m: GgufModel) -> Tokenizer:
    """Byte-level BPE; digits split one by one, then the GPT-2 regex; control tokens are special."""
    if m.meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedModelError(
            f"unsupported tokenizer model {m.meta.get('tokenizer.ggml.model')!r}: only gpt2 (byte-level BPE)"
        )
    pre = m.meta.get("tokenizer.ggml.pre")
    if pre != "smollm":
        raise UnsupportedModelError(f"unsupported pre-tokenizer {pre!r}: only 'smollm'")
    vocab = {tok: i for i, tok in enumerate(m.tokens)}
    merges: list[tuple[str, str]] = []
    for line in m.merges:
        a, b = line.split(" ", 1)
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(m.tokens, m.token_types, strict=True)
        if ty == CONTROL
    ]
    tok.add_special_tokens(specials)
    return tok


def tokenizer_json(m: GgufModel) -> str:
    """Serialised tokenizer.json (deterministic: vocab in id order, keys as tokenizers writes them)."""
    return build_tokenizer(m).to_str(pretty=False)


def tokenizer_config(m: GgufModel) -> dict[str, Any]:
    """tokenizer_config.json for onnxruntime-genai's tokenizer (ort-extensions reads class and specials)."""
    toks = m.tokens

    def tok_at(key: str) -> str | None:
        i = m.meta.get(f"tokenizer.ggml.{key}")
        return toks[int(i)] if i is not None else None

    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, (t, ty) in enumerate(zip(toks, m.token_types, strict=True))
        if ty == CONTROL
    }
    return {
        "add_bos_token": bool(m.meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": tok_at("bos_token_id"),
        "clean_up_tokenization_spaces": False,
        "eos_token": tok_at("eos_token_id"),
        "model_max_length": int(m.meta.get("llama.context_length", 2048)),
        "pad_token": tok_at("padding_token_id"),
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": tok_at("unknown_token_id"),
    }


def dumps(obj: Any) -> str:
    """Stable JSON text for the written config files."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
