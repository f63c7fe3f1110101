"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/signature/{id}.

Handlers reach the LLM through `request.app.state.llm`; without one (a manifest with no LLM) every
/v1 route answers OpenAI's 404. Refusals are RequestErrors, which protocol/edge.py renders in OpenAI's
error shape for paths under /v1.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from protocol.edge import SEALED_SALT
from protocol.errors import RequestError
from protocol.llm import REQUEST_ID_HEADER

from .llm_schemas import ChatCompletionRequest, CompletionRequest, OpenAIErrorBody
from .llm_service import LlmService

_JSON = "application/json"
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
    service = _llm(request)
    plan = service.plan(
        await request.body(),
        chat=chat,
        request_id_header=request.headers.get(REQUEST_ID_HEADER),
        salt=request.scope.get(SEALED_SALT),
    )
    headers = {**_headers(request), REQUEST_ID_HEADER: "0x" + plan.request_id.hex()}
    if plan.stream:
        events = service.stream(plan)
        first = await anext(events)  # a 429 or other refusal surfaces here, before a 200 is sent
        return StreamingResponse(
            _prepend(first, events),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    body = await service.complete(plan, request.is_disconnected)
    return Response(body, media_type=_JSON, headers=headers)


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
