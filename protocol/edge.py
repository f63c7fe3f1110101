"""The HTTP edge every verinfer server puts in front of its routes: one body limit, one request id, one
access log line, one error shape per protocol family (docs/PROTOCOL.md, "Errors").

It is plain ASGI, so the enclave's inference fast path and the FastAPI routes behind it (and the relay's
verifier service) get the same treatment. Bodies are read here, up to the limit, before any route sees
them: a declared Content-Length over the limit is refused before a byte is read, a chunked body as soon as
it grows past the limit, so no route can be made to buffer more.

Error families:
    KServe V2 routes (paths under /v2)  {"error": message, "code": code}   (V2 requires "error")
    every other route                   {"code": code, "message": message}
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from .errors import RequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
# Accepted from callers as is (so a client's trace id survives); anything else is replaced by a fresh id.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
V2_PREFIX = "/v2"


def is_v2(path: str) -> bool:
    """The one rule for which error family a path belongs to."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_body(error: RequestError, *, v2: bool) -> bytes:
    if v2:
        return orjson.dumps({"error": error.message, "code": error.code})
    return orjson.dumps({"code": error.code, "message": error.message})


def error_for_path(path: str, error: RequestError) -> bytes:
    return error_body(error, v2=is_v2(path))


def request_id_of(scope: Scope) -> str:
    """The X-Request-ID of the request being served (set by HttpEdge)."""
    value: str = scope.get("state", {}).get("request_id", "")
    return value


class _Disconnected(Exception):
    pass


class HttpEdge:
    """Body limit, X-Request-ID (accepted or generated, echoed, logged) and an access log line."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        logger: str = "verinfer.access",
        observe: Callable[[str, int], None] | None = None,
        on_error: Callable[[RequestError], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.observe = observe  # (path, status) of every answered request, for metrics
        self.on_error = on_error  # refusals made here (413), for metrics
        self.log = logging.getLogger(logger)
        self.too_large = RequestError(413, "body_too_large", f"request body exceeds {max_body} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            try:
                body = await self._read_body(scope, receive)
            except RequestError as error:
                if self.on_error is not None:
                    self.on_error(error)
                await _send_error(send_with_id, error, scope["path"])
            except _Disconnected:
                status = 499  # nginx's code for "client closed the request"; nothing is sent
            else:
                await self.app(scope, _replay(body, receive), send_with_id)
        finally:  # also when the app raised after answering 500
            if self.observe is not None and status:
                self.observe(scope["path"], status)
            if self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "%s %s %s %d %.2fms",
                    request_id.decode(),
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                raise self.too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self.too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _request_id(headers: Any) -> bytes:
    for key, value in headers:
        if key == REQUEST_ID_HEADER:
            if _REQUEST_ID.match(value):
                return bytes(value)
            break
    return os.urandom(16).hex().encode()


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then whatever the server sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: RequestError, path: str) -> None:
    payload = error_for_path(path, error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    # The unread rest of the body is not drained: the connection is closed after the answer.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
