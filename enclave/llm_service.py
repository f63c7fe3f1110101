"""Signed LLM completions: OpenAI requests in, text and receipts out (docs/PROTOCOL.md, section 9).

The engine (enclave/llm_engine.py) generates tokens in its own thread; this module turns a request body
into a prompt and sampling parameters, the engine's tokens into text (stop strings, UTF-8 held until
whole), and the text into receipts signed by the enclave key:

- non-streamed: one final receipt in the JSON body's `receipt`;
- streamed: every chunk carries `verinfer.chain`, the hash chain over the text sent so far; every
  `checkpoint_tokens` tokens a chunk also carries a signed checkpoint receipt over (tokens, chain), and
  the last chunk before `data: [DONE]` carries the final receipt, so a client that stops early still
  holds a verifiable prefix.

Nothing is signed for a generation that failed (the engine refuses non-finite logits), and a client that
goes away cancels its generation at the engine's next step.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from protocol import llm
from protocol.addresses import checksum_address
from protocol.errors import RequestError, bad_request, not_found
from protocol.inputs import parse_json
from protocol.manifest import ModelEntry
from protocol.receipts import Receipt, SignedReceipt, sign_receipt
from protocol.sealing import commit_input, commit_output

from .llm_engine import EngineFull, LlmEngine, SamplingParams
from .llm_schemas import ChatCompletionRequest, CompletionRequest
from .llm_text import LlmText, StopMatcher
from .service import EnclaveService, parse_request_id

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_CHECKPOINT_TOKENS = 32
SIGNATURES_KEPT = 10_000
_SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated request: what to generate and how to answer."""

    chat: bool
    request_id: bytes
    body: bytes
    input_hash: bytes
    prompt: list[int]
    params: SamplingParams
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    created: int
    salt: bytes | None = None  # sealed (enclave/gateway.py): receipts commit to the hashes with it

    @property
    def completion_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request_id.hex()


@dataclass(frozen=True, slots=True)
class Piece:
    """Text that became final at one engine step, the tokens generated so far, and the finish reason."""

    text: str
    tokens: int
    finish: str | None


@dataclass(slots=True)
class Timing:
    """When a generation was accepted and when its first token arrived (perf_counter seconds)."""

    started: float
    first_token: float | None = None

    def report(self) -> tuple[float, float | None]:
        """(seconds since accepted, time to first token)."""
        first = None if self.first_token is None else self.first_token - self.started
        return time.perf_counter() - self.started, first


class _Sink:
    """The engine thread's callbacks, handed to the event loop."""

    __slots__ = ("_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue

    def on_tokens(self, tokens: list[int]) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, tokens)

    def on_finish(self, reason: str, error: str | None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (reason, error))


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _invalid(exc: ValidationError) -> RequestError:
    """Pydantic's first complaint as OpenAI words it; `param` is the top-level field at fault."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    path = [str(p) for p in loc if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or "-" in p))]
    where = ".".join(path)
    message = f"Invalid value for '{where}': {first.get('msg')}" if where else str(first.get("msg"))
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {where}"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{where}'"
    return RequestError(400, "invalid_request", message, param=path[0] if path else None)


def _unsupported(param: str, what: str) -> RequestError:
    return RequestError(400, "unsupported_parameter", f"{param}: {what}", param=param)


class LlmService:
    """One served LLM: its entry in the attested manifest, its text side and its engine."""

    def __init__(
        self,
        enclave: EnclaveService,
        entry: ModelEntry,
        engine: LlmEngine,
        *,
        checkpoint_tokens: int = DEFAULT_CHECKPOINT_TOKENS,
        max_context: int,
    ) -> None:
        if checkpoint_tokens < 1:
            raise ValueError("checkpoint_tokens must be at least 1")
        self.enclave = enclave
        self.entry = entry
        self.engine = engine
        self.text = LlmText(enclave.manifest.directory / entry.file)
        self.checkpoint_tokens = checkpoint_tokens
        self.max_context = max_context
        self.signatures: OrderedDict[str, str] = OrderedDict()
        self.on_finished: Callable[[Plan, Piece, float, float | None], None] | None = None  # metrics

    @property
    def name(self) -> str:
        return self.entry.name

    # --- requests ------------------------------------------------------------------------------------

    def plan(
        self, body: bytes, *, chat: bool, request_id_header: str | None, salt: bytes | None = None
    ) -> Plan:
        """Parse and check a request body; every refusal is an OpenAI-shaped 4xx. A sealed request's
        receipts are over salted commitments (`salt`), and the chain starts from the input commitment."""
        raw = parse_json(body)
        if not isinstance(raw, dict):
            raise bad_request("invalid_request", "body must be a JSON object")
        try:
            request: ChatCompletionRequest | CompletionRequest = (
                ChatCompletionRequest.model_validate(raw) if chat else CompletionRequest.model_validate(raw)
            )
        except ValidationError as exc:
            raise _invalid(exc) from exc
        if request.model != self.name:
            raise RequestError(
                404,
                "model_not_found",
                f"The model {request.model!r} does not exist; GET /v1/models lists {self.name!r}",
                param="model",
            )
        self._refuse_unsupported(request)
        prompt = self._prompt(request)
        limit = request.max_completion_tokens if isinstance(request, ChatCompletionRequest) else None
        limit = limit or request.max_tokens
        max_tokens = limit or (self.max_context - len(prompt) if chat else DEFAULT_COMPLETION_TOKENS)
        if len(prompt) + max_tokens > self.max_context:
            param = "messages" if len(prompt) >= self.max_context else "max_tokens"
            raise RequestError(
                400,
                "context_length_exceeded",
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or the completion.",
                param=param,
            )
        stop = request.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if len(stops) > 4 or any(not s for s in stops):
            raise RequestError(400, "invalid_request", "stop: up to 4 non-empty strings", param="stop")
        temperature = 1.0 if request.temperature is None else float(request.temperature)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if request.top_p is None else float(request.top_p),
            seed=None if request.seed is None else request.seed & (2**64 - 1),  # OpenAI seeds may be negative
            stop_token_ids=frozenset() if request.ignore_eos else self.text.facts.eos_token_ids,
        )
        request_id = parse_request_id(request_id_header)
        return Plan(
            chat=chat,
            request_id=request_id,
            body=body,
            input_hash=llm.input_hash(body) if salt is None else commit_input(salt, llm.input_hash(body)),
            prompt=prompt,
            params=params,
            stops=stops,
            stream=request.stream,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            created=int(time.time()),
            salt=salt,
        )

    def _refuse_unsupported(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        if request.n != 1:
            raise _unsupported("n", "only n=1 is supported")
        if request.presence_penalty or request.frequency_penalty:
            raise _unsupported("presence_penalty", "penalties are not supported (must be 0)")
        if request.logit_bias:
            raise _unsupported("logit_bias", "not supported")
        if request.stream_options is not None and not request.stream:
            raise RequestError(
                400,
                "invalid_request",
                "stream_options is only allowed with stream: true",
                param="stream_options",
            )
        if isinstance(request, CompletionRequest):
            if request.echo or request.logprobs is not None or request.suffix:
                raise _unsupported("echo", "echo, logprobs and suffix are not supported")
            if request.best_of not in (None, 1):
                raise _unsupported("best_of", "only best_of=1 is supported")
        else:
            if request.logprobs or request.top_logprobs is not None:
                raise _unsupported("logprobs", "not supported")
            if request.tools or request.tool_choice not in (None, "none"):
                raise _unsupported("tools", "tool calls are not supported")
            if request.response_format not in (None, {"type": "text"}):
                raise _unsupported("response_format", "only {'type': 'text'} is supported")

    def _prompt(self, request: ChatCompletionRequest | CompletionRequest) -> list[int]:
        if isinstance(request, ChatCompletionRequest):
            text = self.text.chat.render([m.as_template_message() for m in request.messages])
            ids = self.text.encode(text)
        elif isinstance(request.prompt, str):
            ids = self.text.encode(request.prompt)
        elif request.prompt and all(isinstance(p, str) for p in request.prompt):
            if len(request.prompt) != 1:
                raise _unsupported("prompt", "one prompt per request")
            ids = self.text.encode(str(request.prompt[0]))
        else:
            ids = [int(p) for p in request.prompt]
            if not self.text.valid_ids(ids):
                raise RequestError(400, "invalid_request", "prompt: token id out of range", param="prompt")
        if not ids:
            raise RequestError(400, "invalid_request", "the prompt is empty", param="prompt")
        return ids

    # --- generation ----------------------------------------------------------------------------------

    async def pieces(self, plan: Plan, timing: Timing) -> AsyncGenerator[Piece, None]:
        """The completion's text as it becomes final; closing the iterator cancels the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        try:
            generation = self.engine.submit(plan.prompt, plan.params, _Sink(loop, queue))
        except EngineFull as exc:
            raise RequestError(
                429,
                "queue_full",
                "the server is busy: too many requests queued; retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        detokenizer = self.text.detokenizer()
        stopper = StopMatcher(plan.stops)
        tokens = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, list):
                    if timing.first_token is None:
                        timing.first_token = time.perf_counter()
                    tokens += len(item)
                    text = stopper.push(detokenizer.push(item))
                    if stopper.stopped:
                        yield Piece(text, tokens, "stop")
                        return
                    yield Piece(text, tokens, None)
                    continue
                reason, error = item
                if reason not in ("stop", "length"):
                    raise GenerationFailed(error or reason)
                text = stopper.push(detokenizer.flush())
                if not stopper.stopped:
                    text += stopper.flush()
                yield Piece(text, tokens, "stop" if stopper.stopped else reason)
                return
        finally:
            generation.cancel()

    def _sign(self, plan: Plan, output_hash: bytes) -> SignedReceipt:
        receipt = Receipt(
            request_id=plan.request_id,
            model_hash=self.entry.model_hash,
            input_hash=plan.input_hash,
            output_hash=output_hash,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        return sign_receipt(self.enclave.key, receipt)

    def final_receipt(self, plan: Plan, text: str, finish: str, tokens: int) -> SignedReceipt:
        output_hash = llm.output_hash(text, finish, len(plan.prompt), tokens)
        if plan.salt is not None:
            output_hash = commit_output(plan.salt, output_hash)
        signed = self._sign(plan, output_hash)
        self.enclave.record(signed)
        return signed

    def usage(self, plan: Plan, tokens: int) -> dict[str, int]:
        prompt = len(plan.prompt)
        return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}

    async def complete(self, plan: Plan, disconnected: Callable[[], Awaitable[bool]] | None) -> bytes:
        """The non-streamed answer; stops generating when `disconnected()` says the client has gone (None:
        the caller cancels this coroutine instead, as the HTTP edge does)."""
        timing = Timing(time.perf_counter())
        parts: list[str] = []
        last: Piece | None = None
        iterator = self.pieces(plan, timing)
        watcher = None if disconnected is None else asyncio.ensure_future(_wait_disconnect(disconnected))
        try:
            async for piece in iterator:
                parts.append(piece.text)
                last = piece
                if watcher is not None and watcher.done():
                    break
        finally:
            if watcher is not None:
                watcher.cancel()
            await iterator.aclose()
        if last is None or last.finish is None:
            raise RequestError(499, "client_closed", "the client closed the connection")
        text = "".join(parts)
        receipt = self.final_receipt(plan, text, last.finish, last.tokens)
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish, "logprobs": None}
        if plan.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = orjson.dumps(
            {
                "id": plan.completion_id,
                "object": "chat.completion" if plan.chat else "text_completion",
                "created": plan.created,
                "model": self.name,
                "choices": [choice],
                "usage": self.usage(plan, last.tokens),
                "receipt": receipt.to_json(),
            }
        )
        self._remember(plan, body)
        if self.on_finished is not None:
            self.on_finished(plan, last, *timing.report())
        return body

    async def stream(self, plan: Plan) -> AsyncGenerator[bytes, None]:
        """SSE events: text chunks with the hash chain, checkpoints, the final receipt, then [DONE]."""
        timing = Timing(time.perf_counter())
        sent: list[bytes] = []
        chain = llm.chain_start(plan.input_hash)
        parts: list[str] = []
        next_checkpoint = self.checkpoint_tokens
        first = True
        last: Piece | None = None
        iterator = self.pieces(plan, timing)
        try:
            async for piece in iterator:
                last = piece
                if piece.text:
                    chain = llm.chain_next(chain, piece.text)
                    parts.append(piece.text)
                extension: dict[str, Any] = {"chain": "0x" + chain.hex(), "tokens": piece.tokens}
                if piece.tokens >= next_checkpoint and piece.finish is None:
                    signed = self._sign(plan, llm.checkpoint_hash(piece.tokens, chain))
                    extension["checkpoint"] = signed.to_json()
                    next_checkpoint = (piece.tokens // self.checkpoint_tokens + 1) * self.checkpoint_tokens
                if piece.text or "checkpoint" in extension or first:
                    event = self._chunk(plan, piece.text, None, extension, role=first)
                    first = False
                    sent.append(event)
                    yield event
                if piece.finish is not None:
                    break
        except GenerationFailed as exc:
            event = _sse(
                {
                    "error": {
                        "message": f"generation failed, nothing was signed: {exc}",
                        "type": "server_error",
                        "param": None,
                        "code": "generation_failed",
                    }
                }
            )
            yield event
            yield _SSE_DONE
            return
        finally:
            await iterator.aclose()
        if last is None or last.finish is None:
            return
        text = "".join(parts)
        receipt = self.final_receipt(plan, text, last.finish, last.tokens)
        usage = self.usage(plan, last.tokens)
        final = {
            "chain": "0x" + chain.hex(),
            "tokens": last.tokens,
            "usage": usage,
            "receipt": receipt.to_json(),
        }
        if plan.include_usage:
            events = [self._chunk(plan, "", last.finish, {"chain": final["chain"], "tokens": last.tokens})]
            events.append(self._usage_chunk(plan, usage, final))
        else:
            events = [self._chunk(plan, "", last.finish, final)]
        events.append(_SSE_DONE)
        for event in events:
            sent.append(event)
            yield event
        self._remember(plan, b"".join(sent))
        if self.on_finished is not None:
            self.on_finished(plan, last, *timing.report())

    def _chunk(
        self, plan: Plan, text: str, finish: str | None, extension: dict[str, Any], *, role: bool = False
    ) -> bytes:
        if plan.chat:
            delta: dict[str, Any] = (
                {"role": "assistant", "content": text}
                if role
                else ({"content": text} if text or finish is None else {})
            )
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return _sse(
            {
                "id": plan.completion_id,
                "object": kind,
                "created": plan.created,
                "model": self.name,
                "choices": [choice],
                "verinfer": extension,
            }
        )

    def _usage_chunk(self, plan: Plan, usage: dict[str, int], extension: dict[str, Any]) -> bytes:
        return _sse(
            {
                "id": plan.completion_id,
                "object": "chat.completion.chunk" if plan.chat else "text_completion",
                "created": plan.created,
                "model": self.name,
                "choices": [],
                "usage": usage,
                "verinfer": extension,
            }
        )

    # --- GET /v1/signature/{id} ----------------------------------------------------------------------

    def _remember(self, plan: Plan, response: bytes) -> None:
        """Keep sha256(request):sha256(response) for GET /v1/signature, which anyone may ask: never for a
        sealed request, whose hashes would let a guessed prompt be confirmed."""
        if plan.salt is not None:
            return
        self.signatures[plan.completion_id] = llm.signature_text(plan.body, response)
        while len(self.signatures) > SIGNATURES_KEPT:
            self.signatures.popitem(last=False)

    def signature(self, completion_id: str) -> dict[str, str]:
        """EIP-191 over sha256(request):sha256(response), signed now by the same attested key."""
        text = self.signatures.get(completion_id)
        if text is None:
            raise not_found("signature_not_found", f"no completion {completion_id!r} is kept here")
        signature = self.enclave.key.sign_digest(llm.personal_message_digest(text))
        return {
            "text": text,
            "signature": "0x" + signature.hex(),
            "signing_address": checksum_address(self.enclave.key.address),
            "signing_algo": llm.SIGNING_ALGO,
        }

    def models_body(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "verinfer",
                    "modelHash": "0x" + self.entry.sha256,
                    "context_length": self.max_context,
                }
            ],
        }


class GenerationFailed(Exception):
    """The engine could not finish a generation (e.g. non-finite logits); nothing is signed."""


async def _wait_disconnect(disconnected: Callable[[], Awaitable[bool]]) -> None:
    while not await disconnected():
        await asyncio.sleep(0.25)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def load_llm(
    enclave: EnclaveService,
    *,
    max_batch: int = 4,
    max_context: int = 2048,
    queue_limit: int = 16,
    threads: int | None = None,
    checkpoint_tokens: int = DEFAULT_CHECKPOINT_TOKENS,
    spin: bool = True,
) -> LlmService | None:
    """The manifest's LLM, loaded and warmed; None when the manifest lists none."""
    entries = [e for e in enclave.manifest.models.values() if e.is_llm]
    if not entries:
        return None
    if len(entries) > 1:
        raise ValueError("one LLM per enclave is supported")
    entry = entries[0]
    model_dir: Path = enclave.manifest.directory / entry.file
    engine = LlmEngine(
        model_dir,
        max_batch=max_batch,
        max_context=max_context,
        queue_limit=queue_limit,
        threads=threads,
        spin=spin,
    )
    return LlmService(enclave, entry, engine, checkpoint_tokens=checkpoint_tokens, max_context=max_context)
