"""Offline verification of an LLM completion (docs/PROTOCOL.md, section 9), as saved by a client: the exact
request body bytes it sent, and the response: the JSON of a non-streamed completion or the SSE transcript
of a streamed one.

Besides the checks every receipt gets (attestation, enclave key, signature, attested model: verify.py):
  - inputHash is keccak256 of the request bytes;
  - non-streamed: outputHash recomputes from the text, finish_reason and usage;
  - streamed: the hash chain recomputes from the chunks' text, chunk by chunk, and the final receipt's
    outputHash recomputes from the whole text; a transcript cut short verifies up to its last checkpoint
    (the verdict then says PREFIX ONLY, with the length of the prefix that is vouched for).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from attestation import Policy
from protocol import llm
from protocol.manifest import Manifest
from protocol.receipts import ReceiptError, SignedReceipt

from .verify import (
    Commitment,
    Status,
    VerificationReport,
    _check_model,
    check_key_binding,
    check_signer,
    commitments,
    is_pinned,
)


@dataclass
class Checkpoint:
    tokens: int
    chain: bytes
    text: str  # the text received up to this checkpoint
    receipt: Any


@dataclass
class Transcript:
    """What a saved completion claims: its text and receipts, and whether the chunks' chain held."""

    streamed: bool
    model: str | None
    text: str = ""
    finish_reason: str | None = None
    usage: Any = None
    receipt: Any = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    chain_break: str | None = None  # the first chunk whose stated chain differs from the recomputed one


COMPLETION_OBJECTS = frozenset({"text_completion", "chat.completion"})


def is_sse(data: bytes) -> bool:
    return data.lstrip().startswith(b"data:")


def is_completion(response: Any) -> bool:
    """The parsed JSON of a non-streamed /v1 completion (OpenAI's `object` field says which)."""
    return isinstance(response, dict) and response.get("object") in COMPLETION_OBJECTS


def _delta(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    text = choice.get("text")
    if text is None and isinstance(choice.get("delta"), dict):
        text = choice["delta"].get("content")
    return text if isinstance(text, str) else ""


def read_stream(data: bytes, input_digest: bytes | None) -> Transcript:
    """Rebuild a streamed completion from its SSE bytes, recomputing the chain as the client received it."""
    transcript = Transcript(streamed=True, model=None)
    chain = llm.chain_start(input_digest) if input_digest is not None else None
    parts: list[str] = []
    for number, event in enumerate(data.split(b"\n\n")):
        line = event.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            continue
        transcript.model = chunk.get("model", transcript.model)
        delta = _delta(chunk)
        if delta:
            parts.append(delta)
            chain = llm.chain_next(chain, delta) if chain is not None else None
        found = chunk.get("verinfer")
        extension: dict[str, Any] = found if isinstance(found, dict) else {}
        stated = extension.get("chain")
        if chain is not None and stated is not None and stated != "0x" + chain.hex():
            transcript.chain_break = transcript.chain_break or f"chunk {number}"
        choices = chunk.get("choices") or []
        if choices and isinstance(choices[0], dict) and choices[0].get("finish_reason"):
            transcript.finish_reason = choices[0]["finish_reason"]
        if chunk.get("usage"):
            transcript.usage = chunk["usage"]
        if "checkpoint" in extension and chain is not None:
            transcript.checkpoints.append(
                Checkpoint(int(extension.get("tokens", -1)), chain, "".join(parts), extension["checkpoint"])
            )
        if "receipt" in extension:
            transcript.receipt = extension["receipt"]
            transcript.usage = extension.get("usage", transcript.usage)
    transcript.text = "".join(parts)
    return transcript


def read_completion(data: bytes) -> Transcript:
    body = orjson.loads(data)
    if not isinstance(body, dict):
        raise ValueError("a completion response is a JSON object")
    choice = (body.get("choices") or [{}])[0]
    text = choice.get("text")
    if text is None and isinstance(choice.get("message"), dict):
        text = choice["message"].get("content")
    return Transcript(
        streamed=False,
        model=body.get("model"),
        text=text if isinstance(text, str) else "",
        finish_reason=choice.get("finish_reason"),
        usage=body.get("usage"),
        receipt=body.get("receipt"),
    )


def _counts(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is int and type(completion) is int:
        return prompt, completion
    return None


def verify_completion(
    request_body: bytes | None,
    response: bytes,
    attestation: bytes,
    *,
    policy: Policy,
    at: datetime | None = None,
    manifest: Manifest | None = None,
    image_ids: Collection[bytes] = (),
    allow_any_image: bool = False,
    salt: bytes | None = None,
    key_configs: bytes | None = None,
) -> VerificationReport:
    """`salt`: the commitment salt of a sealed request (protocol/sealing.py); its receipt, chain and
    checkpoints start from the salted input commitment."""
    seal_in, seal_out = commitments(salt)
    report = VerificationReport(
        simulated=not policy.root.is_aws, pinned=is_pinned(policy, image_ids), allow_any_image=allow_any_image
    )
    input_digest = seal_in(llm.input_hash(request_body)) if request_body is not None else None
    try:
        transcript = read_stream(response, input_digest) if is_sse(response) else read_completion(response)
    except (ValueError, orjson.JSONDecodeError) as exc:
        report.add("completion", "fail", f"cannot read the response: {exc}")
        return report
    checkpoint = transcript.checkpoints[-1] if transcript.checkpoints else None
    evidence = transcript.receipt if transcript.receipt is not None else (checkpoint and checkpoint.receipt)
    try:
        signed = SignedReceipt.from_json(evidence)
    except ReceiptError as exc:
        detail = "no receipt: the stream ended before its first checkpoint" if evidence is None else str(exc)
        report.add("receipt", "fail", detail)
        return report
    report.receipt = signed.to_json()
    receipt = signed.receipt
    report.add("receipt", "pass", f"request {report.receipt['requestId']} at {receipt.timestamp_ms} ms")
    user_data = check_signer(report, signed, attestation, policy=policy, at=at, image_ids=image_ids)
    if key_configs is not None:
        check_key_binding(report, key_configs, user_data)

    if input_digest is None:
        report.add("input_hash", "skipped", "no request given: inputHash is not tied to what was asked")
    elif input_digest == receipt.input_hash:
        report.add("input_hash", "pass", "keccak256 of the request bytes is the receipt's inputHash")
    else:
        report.add("input_hash", "fail", f"keccak256 of the request bytes is 0x{input_digest.hex()}")

    if transcript.streamed:
        if input_digest is None:
            report.add("chain", "skipped", "the chain starts from inputHash: give the request")
        elif transcript.chain_break is not None:
            report.add("chain", "fail", f"the hash chain breaks at {transcript.chain_break}")
        else:
            report.add("chain", "pass", "every chunk's chain recomputes from the text received")
    _check_output(report, transcript, checkpoint, receipt.output_hash, seal_out)

    requested: str | None = None
    if request_body is not None:
        try:
            named = orjson.loads(request_body).get("model")
            requested = named if isinstance(named, str) else None
        except (orjson.JSONDecodeError, AttributeError):
            requested = None
    _check_model(
        report,
        manifest=manifest,
        user_data=user_data,
        model_hash=receipt.model_hash,
        requested=requested,
        named=requested,
        claimed=transcript.model if isinstance(transcript.model, str) else None,
        with_request=request_body is not None,
    )
    return report


def _check_output(
    report: VerificationReport,
    transcript: Transcript,
    checkpoint: Checkpoint | None,
    actual: bytes,
    seal: Commitment,
) -> None:
    if transcript.receipt is not None:
        counts = _counts(transcript.usage)
        if counts is None or transcript.finish_reason not in llm.FINISH_CODES:
            report.add("output_hash", "fail", "the response lacks finish_reason or usage token counts")
            return
        try:
            recomputed = llm.output_hash(transcript.text, transcript.finish_reason, *counts)
        except llm.CompletionError as exc:
            report.add("output_hash", "fail", str(exc))
            return
        status: Status = "pass" if seal(recomputed) == actual else "fail"
        report.add(
            "output_hash",
            status,
            f"outputHash over the {len(transcript.text)}-character text, finish_reason "
            f"{transcript.finish_reason}, usage {counts}" + ("" if status == "pass" else ": differs"),
        )
        return
    assert checkpoint is not None  # a receipt was found, so it is a checkpoint's
    recomputed = llm.checkpoint_hash(checkpoint.tokens, checkpoint.chain)
    if recomputed != actual:
        report.add(
            "output_hash", "fail", "the last checkpoint's outputHash does not recompute from the chain"
        )
        return
    report.partial = (
        f"the first {checkpoint.tokens} tokens ({len(checkpoint.text)} characters) are vouched for; "
        "the stream ended before its final receipt"
    )
    report.add("output_hash", "pass", f"checkpoint at {checkpoint.tokens} tokens recomputes from the chain")


def verified_text(response: bytes, request_body: bytes | None) -> str:
    """The text a verified report vouches for: all of it, or the prefix up to the last checkpoint."""
    transcript = (
        read_stream(response, request_body and llm.input_hash(request_body))
        if is_sse(response)
        else (read_completion(response))
    )
    if transcript.receipt is not None or not transcript.checkpoints:
        return transcript.text
    return transcript.checkpoints[-1].text
