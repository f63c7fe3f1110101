"""Text around the LLM: tokeniser, chat template, incremental detokenising and stop strings.

The tokeniser is the `tokenizers` one the converter built from the GGUF's own vocabulary and merges (so it
splits text as llama.cpp does); the chat template is the GGUF's, rendered with jinja2's sandbox the way
Hugging Face renders chat templates. Generated tokens become text byte-exactly: each token's bytes come
from the byte-level alphabet, and UTF-8 split across tokens is held back until it is complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from protocol.errors import bad_request


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character each byte value is spelled with in vocab."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes_table(tokenizer: Tokenizer) -> list[bytes]:
    """The bytes each token id stands for; control tokens (chat markers) stand for no text."""
    decoder = byte_decoder()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    for piece, token_id in vocab.items():
        if token_id in special:
            continue
        if all(c in decoder for c in piece):
            table[token_id] = bytes(decoder[c] for c in piece)
        else:  # a user-defined added token spelled in plain text
            table[token_id] = piece.encode("utf-8")
    return table


def complete_utf8_length(data: bytes) -> int:
    """How many leading bytes of `data` end on a character boundary (a split final character is held)."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        return end if back >= need or byte < 0x80 or byte >> 3 > 0b11110 else end - back
    return end


class Detokenizer:
    """Token ids in, text out as soon as it is whole UTF-8."""

    __slots__ = ("_pending", "_table")

    def __init__(self, table: Sequence[bytes]) -> None:
        self._table = table
        self._pending = b""

    def push(self, token_ids: Sequence[int]) -> str:
        table = self._table
        data = self._pending + b"".join(table[t] for t in token_ids)
        cut = complete_utf8_length(data)
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        rest, self._pending = self._pending, b""
        return rest.decode("utf-8", errors="replace")


class StopMatcher:
    """OpenAI's `stop`: the text ends before the first stop string, which is never sent. Text that may be
    the start of a stop string is held until it is known not to be."""

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self._stops:
            return text
        buffer = self._held + text
        found = [i for i in (buffer.find(stop) for stop in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return buffer[: min(found)]
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        rest, self._held = self._held, ""
        return rest


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """llm.json, written by the converter."""

    name: str
    context_length: int
    eos_token_ids: frozenset[int]
    bos_token: str
    eos_token: str

    @classmethod
    def load(cls, path: Path) -> ModelFacts:
        raw = json.loads(path.read_text())
        return cls(
            name=str(raw["name"]),
            context_length=int(raw["context_length"]),
            eos_token_ids=frozenset(int(t) for t in raw["eos_token_ids"]),
            bos_token=str(raw.get("bos_token", "")),
            eos_token=str(raw.get("eos_token", "")),
        )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


class ChatTemplate:
    """The model's own chat template, in a sandbox (a template is code: it must not reach Python)."""

    def __init__(self, source: str, facts: ModelFacts) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        self._template = env.from_string(source)
        self._facts = facts

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._facts.bos_token,
                eos_token=self._facts.eos_token,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise bad_request("invalid_messages", f"the chat template refused these messages: {exc}") from exc


class LlmText:
    """Everything text-side of one served LLM directory."""

    def __init__(self, model_dir: Path) -> None:
        self.facts = ModelFacts.load(model_dir / "llm.json")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.table = token_bytes_table(self.tokenizer)
        self.chat = ChatTemplate((model_dir / "chat_template.jinja").read_text(encoding="utf-8"), self.facts)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def valid_ids(self, ids: Sequence[int]) -> bool:
        size = len(self.table)
        return all(type(i) is int and 0 <= i < size for i in ids)

    def detokenizer(self) -> Detokenizer:
        return Detokenizer(self.table)
