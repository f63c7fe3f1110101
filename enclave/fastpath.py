"""A lean ASGI front for the two inference routes; every other request goes to the FastAPI app.

FastAPI's per-request machinery (Request object, dependency resolution, Response object) costs about as much
as signing a receipt, so the hot routes are served straight from ASGI messages. The body limit is enforced
here too: a declared Content-Length over the limit is refused before reading, a streamed body as it grows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from protocol.errors import RequestError

from .inference import InferenceEndpoints, Reply, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_V2_PREFIX = "/v2/models/"
_V2_SUFFIX = "/infer"


class _Disconnected(Exception):
    pass


class InferenceFastPath:
    def __init__(
        self,
        fallback: ASGIApp,
        endpoints: InferenceEndpoints,
        *,
        max_body: int,
        extra_headers: dict[str, str],
    ) -> None:
        self.fallback = fallback
        self.endpoints = endpoints
        self.max_body = max_body
        self.headers = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in extra_headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/infer":
                await self._serve(scope, receive, send, None)
                return
            if path.startswith(_V2_PREFIX) and path.endswith(_V2_SUFFIX):
                name = path[len(_V2_PREFIX) : -len(_V2_SUFFIX)]
                if name and "/" not in name:
                    await self._serve(scope, receive, send, name)
                    return
        await self.fallback(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, v2_model: str | None) -> None:
        try:
            body = await self._read_body(scope, receive)
        except RequestError as error:
            endpoint = "infer" if v2_model is None else "v2_infer"
            self.endpoints.metrics.error_counter(error.code).inc()
            self.endpoints.metrics.request_counter(endpoint, error.status).inc()
            await self._send(send, (error.status, error_body(error, v2=v2_model is not None)))
            return
        except _Disconnected:
            return
        reply = self.endpoints.infer(body) if v2_model is None else self.endpoints.v2_infer(v2_model, body)
        await self._send(send, reply)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise RequestError(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send(self, send: Send, reply: Reply) -> None:
        status, payload = reply
        headers = [*self.headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
