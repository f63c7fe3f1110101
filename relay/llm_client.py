"""Serving an on-chain text-completion request: POST its input, verbatim, to the enclave's /v1/completions.

The request's input *is* the HTTP body (the enclave signs keccak256 of the bytes it received as inputHash,
protocol/llm.py), so it is sent byte for byte, never re-serialised. The answer's text, finish reason and
token counts are re-encoded as the completion's output tensors (protocol.llm.output_encoding): that
encoding is what `fulfill` carries and what the receipt's outputHash must be the hash of.

Refused for good (PermanentFailure), before anything is sent: an input that is not one JSON object (or
repeats a key, which parsers resolve differently), that names another model than the one requested on
chain, or that asks for a stream or for more than one choice (neither ends in one final receipt).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from protocol.hashing import keccak256
from protocol.llm import REQUEST_ID_HEADER, output_encoding
from protocol.receipts import SignedReceipt

from .errors import EnclaveUnavailable, PermanentFailure
from .http_client import Limits, OutboundError, request

DEFAULT_LLM_DEADLINE_S = 120.0  # a completion takes far longer than a tensor inference
T = TypeVar("T")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise PermanentFailure("the completion request repeats a key")
    return dict(pairs)


def check_request(body: bytes, model: str) -> dict[str, Any]:
    """The parsed request, or PermanentFailure saying why it can never be served as one final receipt."""
    try:
        parsed = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PermanentFailure(f"the completion request is not UTF-8 JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise PermanentFailure("the completion request is not a JSON object")
    if parsed.get("model") != model:
        raise PermanentFailure(f"the completion request names model {parsed.get('model')!r}, not {model!r}")
    if parsed.get("stream") not in (None, False):
        raise PermanentFailure("the completion request asks for a stream (on chain needs one final answer)")
    n = parsed.get("n", 1)
    if type(n) is not int or n != 1:
        raise PermanentFailure(f"the completion request asks for n={n!r} choices (only 1 can be fulfilled)")
    return parsed


def complete(
    url: str, body: bytes, *, model: str, model_hash: bytes, request_id: bytes, limits: Limits
) -> tuple[SignedReceipt, bytes]:
    """The enclave's signed receipt for completing `body`, and the output encoding it signs.

    Checks what only this path knows (the receipt is over these body bytes and this model); the caller
    checks the request id, the output hash and the signature, as for a tensor model."""
    check_request(body, model)
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: "0x" + request_id.hex()}
    try:
        response = request("POST", f"{url}/v1/completions", content=body, headers=headers, limits=limits)
        if 400 <= response.status < 500 and response.status not in (408, 409, 425, 429):
            raise PermanentFailure(f"enclave refused the completion request: {response.text[:200]}")
        answer = response.raise_for_status().json()
    except OutboundError as exc:
        raise EnclaveUnavailable(str(exc)) from exc
    choices, usage = answer["choices"], answer["usage"]
    if not isinstance(choices, list) or len(choices) != 1:
        raise EnclaveUnavailable("the enclave's completion does not have exactly one choice")
    output = output_encoding(
        _typed(choices[0]["text"], str),
        _typed(choices[0]["finish_reason"], str),
        _typed(usage["prompt_tokens"], int),
        _typed(usage["completion_tokens"], int),
    )
    signed = SignedReceipt.from_json(answer["receipt"])
    if signed.receipt.input_hash != keccak256(body) or signed.receipt.model_hash != model_hash:
        raise EnclaveUnavailable("the enclave's receipt is not over the request body sent, for this model")
    return signed, output


def _typed(value: Any, kind: type[T]) -> T:
    """`value` if it is exactly a `kind` (a bool is not a token count); TypeError, a bad answer, if not."""
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    result: T = value
    return result
