"""The I/O-free half of the client's /v1 LLM API: exact request bytes, whole completions verified with
verinfer.verify_llm, streamed text released only as far as a signature vouches for it, and the exchange
of an `openai` client response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from protocol.manifest import Manifest

from .client_core import Attested, Trust, require
from .client_errors import ReceiptError
from .verify import VerificationReport
from .verify_llm import is_sse, read_completion, read_stream, verified_text, verify_completion

LLM_CHECKS = ("receipt", "attestation", "enclave_key", "signature", "input_hash", "output_hash", "model")
STREAM_CHECKS = (*LLM_CHECKS, "chain")


@dataclass(frozen=True)
class Completion:
    """The text of a verified completion (str() gives it), with its receipt."""

    text: str
    finish_reason: str | None
    usage: Any
    receipt: dict[str, Any]
    report: VerificationReport
    body: dict[str, Any] | None  # the whole OpenAI-shaped response (None when streamed)

    def __str__(self) -> str:
        return self.text


def llm_name(manifest: Manifest, model: str | None) -> str:
    if model is not None:
        return model
    names = [entry.name for entry in manifest.models.values() if entry.is_llm]
    if len(names) != 1:
        raise ValueError(f"the attested manifest has {len(names)} LLMs: name one with model=")
    return names[0]


def llm_body(
    manifest: Manifest,
    model: str | None,
    fields: dict[str, Any],
    options: dict[str, Any],
    *,
    stream: bool = False,
) -> bytes:
    """The exact request bytes: inputHash is keccak256 of them, so they are built once and kept."""
    if "stream" in options:
        raise ValueError("use chat_stream / complete_stream for a streamed completion")
    body = {"model": llm_name(manifest, model), **fields, **options}
    return orjson.dumps({**body, "stream": True} if stream else body)


def check_completion(
    attested: Attested,
    trust: Trust,
    request_body: bytes,
    content: bytes,
    *,
    final: bool,
    salt: bytes | None = None,
) -> Completion:
    """Verify a whole /v1 completion (JSON, or a complete SSE transcript) against the exact request bytes
    (and, for a sealed request, its salt)."""
    report = verify_completion(
        request_body,
        content,
        attested.document,
        policy=trust.policy,
        at=attested.at,
        manifest=attested.manifest,
        image_ids=trust.image_ids,
        allow_any_image=trust.allow_any_image,
        salt=salt,
    )
    streamed = is_sse(content)  # an SSE transcript saved from a streamed openai response
    require(report, STREAM_CHECKS if streamed else LLM_CHECKS, final=final)
    if report.partial is not None:
        raise ReceiptError(f"only a prefix is vouched for: {report.partial}", report)
    transcript = read_stream(content, None) if streamed else read_completion(content)
    assert report.receipt is not None
    body = None if streamed else orjson.loads(content)
    return Completion(
        transcript.text, transcript.finish_reason, transcript.usage, report.receipt, report, body
    )


class StreamVerifier:
    """Text of a streamed completion released only as far as a signature vouches for it: at each signed
    checkpoint (every N tokens) and at the final receipt, the whole transcript so far is verified again
    (verify_llm.verify_completion), and the text it vouches for beyond what was released is released."""

    def __init__(self, trust: Trust, request_body: bytes) -> None:
        self.trust = trust
        self.request_body = request_body
        self.data = bytearray()
        self.complete_end = 0  # the transcript up to here is whole events
        self.pending = False  # a complete event carries a checkpoint or the receipt, not yet verified
        self.released = 0  # characters of text released
        self.completion: Completion | None = None

    def feed(self, chunk: bytes, *, ended: bool = False) -> None:
        self.data += chunk
        cut = self.data.rfind(b"\n\n")
        end = len(self.data) if ended else cut + 2 if cut >= 0 else 0
        if end > self.complete_end:
            events = bytes(self.data[self.complete_end : end])
            self.pending = self.pending or b'"checkpoint"' in events or b'"receipt"' in events
            self.complete_end = end

    def release(self, attested: Attested, *, final: bool) -> str:
        """The newly vouched-for text; raises the typed error if the transcript does not verify."""
        if not self.pending:
            return ""
        transcript = bytes(self.data[: self.complete_end])
        report = verify_completion(
            self.request_body,
            transcript,
            attested.document,
            policy=self.trust.policy,
            at=attested.at,
            manifest=attested.manifest,
            image_ids=self.trust.image_ids,
            allow_any_image=self.trust.allow_any_image,
        )
        require(report, STREAM_CHECKS, final=final)
        self.pending = False
        text = verified_text(transcript, self.request_body)
        new, self.released = text[self.released :], len(text)
        if report.partial is None:
            whole = read_stream(transcript, None)
            assert report.receipt is not None
            self.completion = Completion(
                whole.text, whole.finish_reason, whole.usage, report.receipt, report, None
            )
        return new

    def result(self) -> Completion:
        if self.completion is None:
            raise ReceiptError(
                f"the stream ended before its final receipt: only the first {self.released} characters "
                "are vouched for"
            )
        return self.completion


def openai_exchange(response: Any, request_body: bytes | None) -> tuple[bytes, bytes]:
    """(request bytes, response bytes) of what the `openai` client exchanged: its raw response
    (`.with_raw_response.create(...)`), an httpx.Response, or response bytes with `request_body`."""
    http = getattr(response, "http_response", response)
    if isinstance(http, bytes | bytearray):
        content = bytes(http)
        if request_body is None:
            raise ValueError("give request_body: response bytes alone do not say what was asked")
        return request_body, content
    if not hasattr(http, "request"):
        raise TypeError(
            "pass the raw response (`.with_raw_response.create(...)`) or its bytes: a parsed completion "
            "no longer has the bytes its receipt signs"
        )
    content = http.read() if hasattr(http, "read") else http.content
    if request_body is None:
        request_body = http.request.content
    assert isinstance(content, bytes) and isinstance(request_body, bytes)
    return request_body, content


class TextStream:
    """The verified text pieces of a streamed completion (iterate once); `completion` after the end.

    Raises a VerificationError while iterating if a checkpoint or the receipt does not verify, and
    ReceiptError at the end if the stream stopped before its final receipt (what was yielded is vouched
    for by the last checkpoint)."""

    def __init__(self, verifier: StreamVerifier, pieces: Iterator[str]) -> None:
        self._verifier = verifier
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def completion(self) -> Completion:
        """The whole verified completion (text, usage, final receipt); ReceiptError before the end."""
        return self._verifier.result()


class AsyncTextStream:
    """The async twin of TextStream (`async for`)."""

    def __init__(self, verifier: StreamVerifier, pieces: AsyncIterator[str]) -> None:
        self._verifier = verifier
        self._pieces = pieces

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces

    @property
    def completion(self) -> Completion:
        return self._verifier.result()
