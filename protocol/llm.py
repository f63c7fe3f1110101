"""LLM completion receipts: what the enclave signs for a text completion (docs/PROTOCOL.md, section 9).

A completion's receipt is the same EIP-712 `InferenceReceipt` as a tensor model's, with:

    inputHash   keccak256(the exact HTTP request body bytes)          (sampling parameters included)
    modelHash   bundle_hash(files served: ONNX model, tokenizer, chat template, genai config)
    outputHash  keccak256(output_encoding(text, finish_reason, prompt_tokens, completion_tokens))

`output_encoding` is the canonical tensor encoding of three tensors, so the verifier contract's layout check
applies unchanged: text uint8[n] (UTF-8), finish_reason uint8[1] (1 stop, 2 length), usage uint32[2]
(prompt tokens, completion tokens). A streamed and a non-streamed completion of the same text have the same
output hash.

Streaming: chunk k carries chain_k = keccak256(chain_{k-1} || UTF-8 of chunk k's text), chain_0 = inputHash,
and every N tokens a checkpoint receipt whose outputHash is
keccak256("verinfer.llm.checkpoint.v1\\0" || u32 BE completion tokens so far || chain). A checkpoint is a
signed *prefix*: its outputHash is never the hash of a valid output encoding (the domain's first byte is
not the encoding version 0x01), so it cannot fulfil an on-chain request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .hashing import keccak256
from .tensors import TensorEncodingError, decode_tensors, encode_tensors

OUTPUT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("text", "uint8"),
    ("finish_reason", "uint8"),
    ("usage", "uint32"),
)
FINISH_CODES: dict[str, int] = {"stop": 1, "length": 2}
FINISH_NAMES: dict[int, str] = {code: name for name, code in FINISH_CODES.items()}
CHECKPOINT_DOMAIN = b"verinfer.llm.checkpoint.v1\x00"
BUNDLE_DOMAIN = "verinfer.llm.bundle.v1"
SIGNING_ALGO = "ecdsa"
# The receipt's requestId, sent as a header: the body is the request itself (on chain: the request's input)
REQUEST_ID_HEADER = "Verinfer-Request-Id"


class CompletionError(ProtocolError):
    """A completion output encoding that is malformed, or a completion that does not verify."""


@dataclass(frozen=True, slots=True)
class CompletionOutput:
    """What a completion's final receipt commits to."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def encoding(self) -> bytes:
        return output_encoding(self.text, self.finish_reason, self.prompt_tokens, self.completion_tokens)

    def hash(self) -> bytes:
        return keccak256(self.encoding())


def input_hash(request_body: bytes) -> bytes:
    """The receipt's inputHash: over the bytes sent, so a client recomputes it from what it posted."""
    return keccak256(request_body)


def output_encoding(text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    code = FINISH_CODES.get(finish_reason)
    if code is None:
        raise CompletionError(f"finish_reason must be one of {sorted(FINISH_CODES)}, not {finish_reason!r}")
    if not (0 <= prompt_tokens < 2**32 and 0 <= completion_tokens < 2**32):
        raise CompletionError("token counts must fit in uint32")
    return encode_tensors(
        [
            ("text", np.frombuffer(text.encode("utf-8"), dtype=np.uint8)),
            ("finish_reason", np.array([code], dtype=np.uint8)),
            ("usage", np.array([prompt_tokens, completion_tokens], dtype="<u4")),
        ]
    )


def output_hash(text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    return keccak256(output_encoding(text, finish_reason, prompt_tokens, completion_tokens))


def decode_output(encoding: bytes) -> CompletionOutput:
    """The completion an output encoding carries (what an on-chain consumer receives as `output`)."""
    try:
        tensors = decode_tensors(encoding)
    except TensorEncodingError as exc:
        raise CompletionError(f"not a completion output: {exc}") from exc
    names = tuple((name, array.dtype.name) for name, array in tensors)
    if names != OUTPUT_LAYOUT:
        raise CompletionError(f"a completion output is {OUTPUT_LAYOUT}, not {names}")
    text, finish, usage = (array for _, array in tensors)
    if finish.shape != (1,) or usage.shape != (2,) or text.ndim != 1:
        raise CompletionError("finish_reason must hold 1 element, usage 2 and text be one-dimensional")
    reason = FINISH_NAMES.get(int(finish[0]))
    if reason is None:
        raise CompletionError(f"unknown finish_reason code {int(finish[0])}")
    try:
        decoded = text.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CompletionError("text is not UTF-8") from exc
    return CompletionOutput(decoded, reason, int(usage[0]), int(usage[1]))


def chain_start(input_digest: bytes) -> bytes:
    """chain_0: the stream's hash chain starts from the request it answers."""
    return input_digest


def chain_next(chain: bytes, delta: str) -> bytes:
    return keccak256(chain + delta.encode("utf-8"))


def checkpoint_hash(completion_tokens: int, chain: bytes) -> bytes:
    """The outputHash of a checkpoint receipt: a signed prefix, never a complete output."""
    if not 0 <= completion_tokens < 2**32:
        raise CompletionError("token counts must fit in uint32")
    return keccak256(CHECKPOINT_DOMAIN + completion_tokens.to_bytes(4, "big") + chain)


def bundle_hash(files: Mapping[str, str]) -> bytes:
    """The modelHash of an LLM: sha256 over its served files' names and sha256 digests.

    sha256( JSON {"bundle": "verinfer.llm.bundle.v1", "files": {name: sha256 hex}}, keys sorted,
            separators (",", ":"), ASCII )
    """
    body = {"bundle": BUNDLE_DOMAIN, "files": dict(files)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).digest()


def signature_text(request_body: bytes, response_body: bytes) -> str:
    """The text of GET /v1/signature/{id}, the TEE private-ML proxies' convention."""
    return f"{hashlib.sha256(request_body).hexdigest()}:{hashlib.sha256(response_body).hexdigest()}"


def personal_message_digest(text: str) -> bytes:
    """EIP-191 version 0x45 (personal_sign): keccak256("\\x19Ethereum Signed Message:\\n" || len || text)."""
    raw = text.encode("utf-8")
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(raw)).encode("ascii") + raw)
