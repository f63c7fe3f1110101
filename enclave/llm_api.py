"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/signature/{id}.

Handlers reach the LLM through `request.app.state.llm`; without one (a manifest with no LLM) every
/v1 route answers OpenAI's 404. Refusals are RequestErrors, which protocol/edge.py renders in OpenAI's
error shape for paths under /v1. The two generation routes are served by the edge's fast path
(`llm_route`), which answers exactly as these FastAPI routes do with fewer layers per streamed event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from protocol.edge import (
    SEALED_SALT,
    Deferred,
    FastHandler,
    FastReply,
    FastRoute,
    Headers,
    header_pairs,
    openai_error_body,
)
from protocol.errors import RequestError
from protocol.llm import REQUEST_ID_HEADER

from .llm_schemas import ChatCompletionRequest, CompletionRequest, OpenAIErrorBody
from .llm_service import LlmService, Plan

_JSON = "application/json"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_NO_LLM = RequestError(404, "model_not_found", "this enclave serves no LLM; GET /models lists its models")


def _llm(request: Request) -> LlmService:
    service: LlmService | None = request.app.state.llm
    if service is None:
        raise _NO_LLM
    return service


def _headers(request: Request) -> dict[str, str]:
    headers: dict[str, str] = request.app.state.extra_headers
    return headers


async def list_models(request: Request) -> Response:
    """OpenAI's model list (the LLM served here; tensor models are listed by GET /models)."""
    return Response(orjson.dumps(_llm(request).models_body()), media_type=_JSON, headers=_headers(request))


async def _generate(request: Request, *, chat: bool) -> Response:
    """The documented routes: the fast path's answer (`_answer`), as Starlette responses."""
    on_error: Callable[[RequestError], None] = request.app.state.on_error
    status, reply, extra = await _answer(
        _llm(request),
        on_error,
        await request.body(),
        list(request.scope["headers"]),
        request.scope.get(SEALED_SALT),
        chat=chat,
        disconnected=request.is_disconnected,
    )
    headers = {**_headers(request), **{k.decode("latin-1"): v.decode("latin-1") for k, v in extra}}
    if isinstance(reply, bytes):
        return Response(reply, status_code=status, media_type=_JSON, headers=headers)
    if not reply.whole:
        return StreamingResponse(reply.chunks, headers=headers)  # the content-type is in `extra`
    try:
        body = await anext(reply.chunks)
    except RequestError as error:  # counted by _completion
        errors = {**_headers(request), **error.headers}
        return Response(openai_error_body(error), status_code=error.status, media_type=_JSON, headers=errors)
    finally:
        await reply.chunks.aclose()
    return Response(body, media_type=_JSON, headers=headers)


def llm_route(service: LlmService, on_error: Callable[[RequestError], None]) -> FastRoute:
    """The edge's fast route for POST /v1/completions and /v1/chat/completions (protocol/edge.py): each
    event goes from the generation to the socket without FastAPI's routing, middleware and
    StreamingResponse in between (~40 us of the event loop's CPU per token on a 2-vCPU host, where the
    server shares the cores with the inference threads). The documented FastAPI routes give the same
    answer from the same `_answer` (with `create_app(fast_path=False)`, and for sealed requests)."""
    handlers: dict[str, FastHandler] = {
        "/v1/completions": partial(_answer, service, on_error, chat=False),
        "/v1/chat/completions": partial(_answer, service, on_error, chat=True),
    }

    def route(method: str, path: str) -> FastHandler | None:
        return handlers.get(path) if method == "POST" else None

    return route


async def _answer(
    service: LlmService,
    on_error: Callable[[RequestError], None],
    body: bytes,
    headers: Headers,
    salt: bytes | None,
    *,
    chat: bool,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> FastReply:
    """A generation request to (status, body, headers): a refusal in OpenAI's shape, or a Deferred body
    (the events of a stream, or the one JSON answer). `disconnected`: polled by a non-streamed answer
    whose caller does not cancel it when the client leaves (the edge does)."""
    request_id = next((v for k, v in headers if k == _REQUEST_ID_KEY), None)
    try:
        plan = service.plan(
            body,
            chat=chat,
            request_id_header=None if request_id is None else request_id.decode("latin-1"),
            salt=salt,
        )
        out = [(_REQUEST_ID_KEY, b"0x" + plan.request_id.hex().encode())]
        if not plan.stream:
            return 200, Deferred(_completion(service, plan, on_error, disconnected), whole=True), out
        events = service.stream(plan)
        first = await anext(events)  # a 429 or other refusal surfaces here, before a 200 is sent
    except RequestError as error:
        on_error(error)
        return error.status, openai_error_body(error), header_pairs(error.headers)
    return 200, Deferred(_prepend(first, events)), [*out, *_SSE_HEADERS]


async def _completion(
    service: LlmService,
    plan: Plan,
    on_error: Callable[[RequestError], None],
    disconnected: Callable[[], Awaitable[bool]] | None,
) -> AsyncGenerator[bytes, None]:
    """The non-streamed answer as a Deferred's one body."""
    try:
        body = await service.complete(plan, disconnected)
    except RequestError as error:  # answered in OpenAI's shape by whoever sends the Deferred
        on_error(error)
        raise
    yield body


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # a client that went away cancels its generation


async def post_completions(request: Request) -> Response:
    """Text completion with a signed receipt (`receipt`; streamed: `verinfer` on every chunk)."""
    return await _generate(request, chat=False)


async def post_chat_completions(request: Request) -> Response:
    """Chat completion (the model's own chat template) with a signed receipt."""
    return await _generate(request, chat=True)


async def get_signature(request: Request, completion_id: str) -> Response:
    """EIP-191 signature over sha256(request body):sha256(response bytes), as TEE LLM proxies offer."""
    body = orjson.dumps(_llm(request).signature(completion_id))
    return Response(body, media_type=_JSON, headers=_headers(request))


def _documented(request: type[BaseModel] | None, *statuses: int) -> dict[str, Any]:
    """OpenAPI for a /v1 route: JSON or SSE answers, OpenAI-shaped errors, the body schema handlers parse."""
    options: dict[str, Any] = {
        "responses": {
            200: {"content": {_JSON: {}, "text/event-stream": {}}},
            **{status: {"model": OpenAIErrorBody} for status in statuses},
        }
    }
    if request is not None:
        schema = {"$ref": f"#/components/schemas/{request.__name__}"}
        options["openapi_extra"] = {"requestBody": {"required": True, "content": {_JSON: {"schema": schema}}}}
    return options


REQUEST_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatCompletionRequest)


def install(api: FastAPI, llm: LlmService | None) -> None:
    api.state.llm = llm
    api.add_api_route("/v1/models", list_models, methods=["GET"], **_documented(None, 404))
    generation = (400, 404, 413, 429, 499)
    api.add_api_route(
        "/v1/completions", post_completions, methods=["POST"], **_documented(CompletionRequest, *generation)
    )
    api.add_api_route(
        "/v1/chat/completions",
        post_chat_completions,
        methods=["POST"],
        **_documented(ChatCompletionRequest, *generation),
    )
    api.add_api_route(
        "/v1/signature/{completion_id}", get_signature, methods=["GET"], **_documented(None, 404)
    )
