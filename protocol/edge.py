"""The HTTP edge every verinfer server puts in front of its routes: one body limit, one request id, one
access log line, one error shape per protocol family (docs/PROTOCOL.md, "Errors").

It is plain ASGI, so the enclave's inference fast path and the FastAPI routes behind it (and the relay's
verifier service) get the same treatment. Bodies are read here, up to the limit, before any route sees
them: a declared Content-Length over the limit is refused before a byte is read, a chunked body as soon as
it grows past the limit, so no route can be made to buffer more.

Error families:
    KServe V2 routes (paths under /v2)  {"error": message, "code": code}   (V2 requires "error")
    OpenAI routes (paths under /v1)     {"error": {"message", "type", "param", "code"}}   (OpenAI's shape)
    every other route                   {"code": code, "message": message}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from typing import IO, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .compression import MIN_COMPRESSED_SIZE, accepted_encoding, decode_body, encode_body
from .errors import RequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("verinfer.edge")
_INTERNAL = RequestError(500, "internal", "internal error; nothing was signed")
REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED = 499  # nginx's status for "client closed the request": logged, never sent
# Bodies up to this size may be answered by the HTTP protocol itself (HttpEdge.direct); uvicorn stops reading
# a connection past it, so larger ones keep its flow control.
DIRECT_BODY_LIMIT = 64 * 1024
# Scope key of a request that arrived sealed (enclave/gateway.py): its 32-byte commitment salt. Only the
# gateway sets it, on the inner request it decrypted; no header of a clear request can.
SEALED_SALT = "verinfer.sealed_salt"
# Accepted from callers as is (so a client's trace id survives); anything else is replaced by a fresh id.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
V2_PREFIX = "/v2"
OPENAI_PREFIX = "/v1"


def is_v2(path: str) -> bool:
    """The one rule for which error family a path belongs to."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def is_openai(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error_type(status: int) -> str:
    """OpenAI's error `type` for a status: what its client libraries map to exception classes."""
    if status == 429:
        return "rate_limit_error"
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(error: RequestError, *, v2: bool) -> bytes:
    if v2:
        return orjson.dumps({"error": error.message, "code": error.code})
    return orjson.dumps({"code": error.code, "message": error.message})


def openai_error_body(error: RequestError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": openai_error_type(error.status),
                "param": error.param,
                "code": error.code,
            }
        }
    )


def error_for_path(path: str, error: RequestError) -> bytes:
    if is_openai(path):
        return openai_error_body(error)
    return error_body(error, v2=is_v2(path))


class AccessLog:
    """One line per request, buffered: `logging` costs ~60 us a record (half a signed inference).

    Lines are formatted with an f-string (or orjson) and written in batches: when 256 are waiting, or from
    a timer 0.25 s after the first one, so a line is never held for long and a quiet server flushes too.
    Text: `2026-12-01T15:04:05Z <request id> <method> <path> <status> <ms>ms`.
    `json_lines`: `{"ts": "2026-12-01T15:04:05.123Z", "request_id", "method", "path", "status", "ms"}`, one
    object a line, for log pipelines (the path as sent, JSON-escaped).
    """

    def __init__(
        self,
        stream: IO[str] | None,
        *,
        max_lines: int = 256,
        max_delay_s: float = 0.25,
        json_lines: bool = False,
    ) -> None:
        self.stream = stream
        self.max_lines = max_lines
        self.max_delay_s = max_delay_s
        self.json_lines = json_lines
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def write(self, request_id: bytes, method: str, path: str, status: int, started: float) -> None:
        if self.stream is None:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        elapsed = (time.perf_counter() - started) * 1000
        if self.json_lines:
            record = {
                "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
                "request_id": request_id.decode(),
                "method": method,
                "path": path,
                "status": status,
                "ms": round(elapsed, 3),
            }
            try:
                line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            except orjson.JSONEncodeError:  # a lone surrogate in the path: log its escaped form
                record["path"] = repr(path)
                line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            self.lines.append(line.decode())
        else:
            self.lines.append(
                f"{self._stamp}Z {request_id.decode()} {method} {_printable(path)} {status} {elapsed:.2f}ms\n"
            )
        if len(self.lines) == 1:
            try:
                asyncio.get_running_loop().call_later(self.max_delay_s, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write at once
                self.flush()
        elif len(self.lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        if self.lines and self.stream is not None:
            text, self.lines = "".join(self.lines), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken log stream must not take requests down
                pass


def _printable(path: str) -> str:
    """Paths are attacker-chosen: no spaces or control characters in a log line."""
    return path if path.isprintable() and " " not in path else repr(path)


class _Disconnected(Exception):
    pass


Headers = list[tuple[bytes, bytes]]


class Deferred:
    """A fast reply whose body is made after the handler has returned, while the edge watches the client.

    `chunks` is sent as it comes, with the chunked coding (server-sent events), or, when `whole`, yields
    exactly one body, sent with its length (and compressed like any fast reply); a RequestError it raises
    before that becomes the error answer. A client that leaves cancels the sending, and closing `chunks`
    stops the work behind it: the edge answers a generation as it would /infer, without FastAPI's routing,
    middleware and StreamingResponse between each event and the socket.
    """

    __slots__ = ("chunks", "whole")

    def __init__(self, chunks: AsyncGenerator[bytes, None], *, whole: bool = False) -> None:
        self.chunks = chunks
        self.whole = whole


# (status, body, headers): JSON unless the headers name another content-type.
FastReply = tuple[int, bytes | Deferred, Headers]
# (body, headers, sealing salt) -> reply; the salt is the scope's SEALED_SALT (None for a clear request).
FastHandler = Callable[[bytes, Headers, bytes | None], Awaitable[FastReply]]
FastRoute = Callable[[str, str], FastHandler | None]
_CONTENT_TYPE = b"content-type"
_JSON_TYPE = (_CONTENT_TYPE, b"application/json")


class _Request:
    """What the edge reads from a request's headers, in one pass."""

    __slots__ = ("accept_encoding", "content_encoding", "content_length", "request_id", "transfer_encoding")

    def __init__(self) -> None:
        self.request_id: bytes | None = None
        self.content_length: bytes | None = None
        self.content_encoding: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.transfer_encoding = False


def _read_headers(headers: Headers) -> _Request:
    request = _Request()
    for key, value in headers:
        if key == REQUEST_ID_HEADER:
            if request.request_id is None and _REQUEST_ID.match(value):
                request.request_id = bytes(value)
        elif key == b"content-length":
            request.content_length = value
        elif key == b"content-encoding":
            request.content_encoding = value
        elif key == b"accept-encoding":
            request.accept_encoding = value
        elif key == b"transfer-encoding":
            request.transfer_encoding = True
    return request


class HttpEdge:
    """Body limit, content codings, X-Request-ID (accepted or generated, echoed, logged), an access log line.

    `fast_route(method, path)` may claim a request for an async handler from (body bytes, request headers) to
    (status, body, headers), answered here straight from ASGI messages with `fast_headers`: the enclave's
    inference routes, where FastAPI's per-request machinery would cost as much as signing, and the LLM's
    generations, whose body is a `Deferred` (made, or streamed, after the handler returns). Everything else
    goes to `app`. Request bodies in gzip or deflate are inflated here (within the body limit) for every
    route, and answers are compressed when the client's Accept-Encoding asks (protocol/compression.py);
    streamed answers (server-sent events) are never held back to be compressed.

    `direct_route` names the fast routes whose replies are always whole bodies (never a `Deferred`): the
    HTTP protocol may answer those itself, without ASGI messages (`direct`, enclave/http_protocol.py).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        access_log: AccessLog | None = None,
        observe: Callable[[str, int, float], None] | None = None,
        on_error: Callable[[RequestError], None] | None = None,
        fast_route: FastRoute | None = None,
        fast_headers: Mapping[str, str] | None = None,
        direct_route: FastRoute | None = None,
    ) -> None:
        self.app = app
        self.fast_route = fast_route
        self.direct_route = direct_route
        self._direct_limit = min(max_body, DIRECT_BODY_LIMIT)
        self.fast_headers = header_pairs(fast_headers or {})
        self.max_body = max_body
        self.access_log = access_log or AccessLog(None)
        self.observe = observe  # (path, status, seconds) of every answered request, for metrics
        self.on_error = on_error  # refusals made here (413, 415, bad codings), for metrics
        self._prefix = os.urandom(12).hex().encode()
        self._counter = 0
        self.too_large = RequestError(413, "body_too_large", f"request body exceeds {max_body} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = _read_headers(scope["headers"])
        request_id = request.request_id or self._fresh_id()
        compress = None if request.accept_encoding is None else accepted_encoding(request.accept_encoding)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                if type(headers) is list:
                    headers.append((REQUEST_ID_HEADER, request_id))
                else:
                    message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            try:
                body = await self._read_body(request.content_length, receive)
                if request.content_encoding is not None:
                    body = decode_body(
                        request.content_encoding.decode("latin-1"), body, self.max_body, self.too_large
                    )
                    scope = _decoded_scope(scope, len(body))
            except RequestError as error:
                if self.on_error is not None:
                    self.on_error(error)
                await _send_error(send_with_id, error, scope["path"])
            except _Disconnected:
                status = CLIENT_CLOSED
            else:
                handler = None if self.fast_route is None else self.fast_route(scope["method"], scope["path"])
                if handler is not None:
                    status, payload, extra = await handler(body, scope["headers"], scope.get(SEALED_SALT))
                    headers = [*extra, *self.fast_headers, (REQUEST_ID_HEADER, request_id)]
                    if isinstance(payload, Deferred):
                        status = await _send_deferred(
                            _Sending(send, status, headers, compress, scope["path"]), payload, receive
                        )
                    else:
                        await _send_whole(send, status, payload, headers, compress)
                else:
                    # Under /v2 only inference answers are compressed, as Triton does: Triton's async
                    # client asks for gzip on every request but inflates only inference answers.
                    reply: Send
                    if compress is None or is_v2(scope["path"]):
                        reply = send_with_id
                    else:
                        reply = _compressing(send_with_id, compress)
                    await self.app(scope, _replay(body, receive), reply)
        finally:  # also when the app raised after answering 500
            if self.observe is not None and status:
                self.observe(scope["path"], status, time.perf_counter() - started)
            self.access_log.write(request_id, scope["method"], scope["path"], status, started)

    async def _read_body(self, content_length: bytes | None, receive: Receive) -> bytes:
        if content_length is not None and (
            not content_length.isdigit() or int(content_length) > self.max_body
        ):
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

    def direct(self, method: str, path: str, headers: Headers) -> DirectExchange | None:
        """The request, if the HTTP protocol may answer it without ASGI: a `direct_route`, a body of a
        declared length within the limits and no content coding either way (the edge's own work then has
        nothing to do but the request id, the headers, the metrics and the access log); else None, and the
        request goes through `__call__` as any other."""
        handler = None if self.direct_route is None else self.direct_route(method, path)
        if handler is None:
            return None
        request = _read_headers(headers)
        length = request.content_length
        if (
            length is None
            or not length.isdigit()
            or int(length) > self._direct_limit
            or request.content_encoding is not None
            or request.accept_encoding is not None
            or request.transfer_encoding
        ):
            return None
        return DirectExchange(
            self, handler, method, path, headers, request_id=request.request_id or self._fresh_id()
        )

    def _fresh_id(self) -> bytes:
        """A random per-process prefix and a counter: unique, and cheaper than fresh randomness each time."""
        self._counter += 1
        return b"%s%08x" % (self._prefix, self._counter)


class DirectExchange:
    """One request answered by the HTTP protocol itself (HttpEdge.direct): the same handler, reply headers,
    metrics and access-log line as the fast route answered through ASGI."""

    __slots__ = ("edge", "handler", "headers", "method", "path", "request_id", "started")

    def __init__(
        self,
        edge: HttpEdge,
        handler: FastHandler,
        method: str,
        path: str,
        headers: Headers,
        *,
        request_id: bytes,
    ) -> None:
        self.edge = edge
        self.handler = handler
        self.method = method
        self.path = path
        self.headers = headers
        self.request_id = request_id
        self.started = time.perf_counter()

    async def answer(self, body: bytes) -> tuple[int, Headers, bytes]:
        """(status, response headers with the length, body) for the request's whole body."""
        payload: bytes | Deferred | None = None
        try:
            status, payload, extra = await self.handler(body, self.headers, None)
        except Exception:  # the fast handlers answer their own failures; this would be a bug
            log.exception("a direct answer failed")
        if isinstance(payload, Deferred):  # not a direct route's reply: a bug, answered as one
            await payload.chunks.aclose()
            log.error("a direct route answered a deferred body: %s", self.path)
            payload = None
        if payload is None:
            status, payload, extra = _INTERNAL.status, error_for_path(self.path, _INTERNAL), []
        headers = [*extra, *self.edge.fast_headers, (REQUEST_ID_HEADER, self.request_id)]
        return status, _whole_headers(headers, payload), payload

    def finish(self, status: int) -> None:
        """Count and log the exchange (CLIENT_CLOSED: the client left before the answer)."""
        edge = self.edge
        if edge.observe is not None:
            edge.observe(self.path, status, time.perf_counter() - self.started)
        edge.access_log.write(self.request_id, self.method, self.path, status, self.started)


def _decoded_scope(scope: Scope, length: int) -> Scope:
    """The request as the routes see it once its body is inflated: no Content-Encoding, the real length."""
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
    headers.append((b"content-length", b"%d" % length))
    return {**scope, "headers": headers}


def _compressing(send: Send, encoding: str) -> Send:
    """Compress a whole answer sent in one body message; a streamed one (more_body) passes as it is."""
    start: Message | None = None

    async def compressing(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        first, start = start, None
        body = message.get("body", b"")
        headers = list(first.get("headers", []))
        encoded = any(key == b"content-encoding" for key, _ in headers)
        if not message.get("more_body", False) and not encoded and len(body) >= MIN_COMPRESSED_SIZE:
            body = encode_body(encoding, body)
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers += [
                (b"content-length", b"%d" % len(body)),
                (b"content-encoding", encoding.encode()),
                (b"vary", b"accept-encoding"),
            ]
            message = {**message, "body": body}
        await send({**first, "headers": headers})
        await send(message)

    return compressing


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


async def _send_whole(
    send: Send, status: int, payload: bytes, headers: Headers, compress: str | None
) -> None:
    """A fast reply in one body: JSON unless named otherwise, compressed if asked for, with its length."""
    if compress is not None and len(payload) >= MIN_COMPRESSED_SIZE:
        payload = encode_body(compress, payload)
        headers.append((b"content-encoding", compress.encode()))
        headers.append((b"vary", b"accept-encoding"))
    await send({"type": "http.response.start", "status": status, "headers": _whole_headers(headers, payload)})
    await send({"type": "http.response.body", "body": payload})


def _whole_headers(headers: Headers, payload: bytes) -> Headers:
    """A whole reply's headers: JSON unless they name another content-type, and the body's length."""
    if not any(key == _CONTENT_TYPE for key, _ in headers):
        headers.append(_JSON_TYPE)
    headers.append((b"content-length", b"%d" % len(payload)))
    return headers


class _Sending:
    """One Deferred reply on its way: where it goes, and how far it got."""

    __slots__ = ("compress", "done", "headers", "path", "send", "status")

    def __init__(self, send: Send, status: int, headers: Headers, compress: str | None, path: str) -> None:
        self.send = send
        self.status = status
        self.headers = headers
        self.compress = compress
        self.path = path
        self.done = False  # the answer's last message is being sent: a disconnect now is its completion


async def _send_deferred(sending: _Sending, reply: Deferred, receive: Receive) -> int:
    """Send `reply` while watching the client; the status answered, 499 when the client left first."""
    pump = asyncio.ensure_future(_pump(sending, reply))
    gone = asyncio.ensure_future(receive())  # the body is read: the next message is http.disconnect
    try:
        await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping: stop the work too
        pump.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if not pump.done() and not sending.done:
        pump.cancel()  # the client left: closing the chunks stops what makes them
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        return CLIENT_CLOSED
    await pump  # raises what a bug raised
    return sending.status


async def _pump(sending: _Sending, reply: Deferred) -> None:
    send, chunks = sending.send, reply.chunks
    try:
        if reply.whole:
            try:
                body = await anext(chunks)
            except RequestError as error:
                body = _deferred_error(sending, error)
            except Exception:  # a bug: answered in the route's error shape, nothing signed
                log.exception("a deferred answer failed")
                body = _deferred_error(sending, _INTERNAL)
            sending.done = True
            await _send_whole(send, sending.status, body, sending.headers, sending.compress)
            return
        # streamed answers are never held back to be compressed
        await send({"type": "http.response.start", "status": sending.status, "headers": sending.headers})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        sending.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await chunks.aclose()


def header_pairs(headers: Mapping[str, str]) -> Headers:
    """Headers given by name (a refusal's Retry-After or Allow, the server's own) as ASGI pairs."""
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _deferred_error(sending: _Sending, error: RequestError) -> bytes:
    sending.status = error.status
    sending.headers = [
        *((k, v) for k, v in sending.headers if k != _CONTENT_TYPE),
        *header_pairs(error.headers),
    ]
    return error_for_path(sending.path, error)


async def _send_error(send: Send, error: RequestError, path: str) -> None:
    payload = error_for_path(path, error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    # The unread rest of the body is not drained: the connection is closed after the answer.
    headers.append((b"connection", b"close"))
    headers.extend(header_pairs(error.headers))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# --- one error responder for FastAPI apps behind the edge ---------------------------------------------------

_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route of this path answers (the Allow header of a 405)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install_error_handlers(
    app: FastAPI,
    *,
    on_error: Callable[[RequestError], None] | None = None,
    parameter_codes: Mapping[str, str] | None = None,
    internal: RequestError | None = None,
) -> None:
    """Every refusal of `app` in its family's shape: RequestError as raised, Starlette's 404/405 (with
    `Allow`), validation failures as 400 (a parameter named in `parameter_codes` gets that code), and any
    other exception as a 500 `internal`. `on_error` sees each one (metrics)."""
    codes = dict(parameter_codes or {})
    internal_error = internal or RequestError(500, "internal", "internal error")

    def respond(request: Request, error: RequestError) -> Response:
        if on_error is not None:
            on_error(error)
        body = error_for_path(request.url.path, error)
        return Response(body, status_code=error.status, media_type="application/json", headers=error.headers)

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return respond(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}
        headers = dict(exc.headers or {})
        if status == 405:  # Starlette names the first route of the path only; a path may have several
            headers["Allow"] = _allowed_methods(app, request.scope)
        error = RequestError(
            status,
            _HTTP_CODES.get(status, f"http_{status}"),
            message.get(status, str(exc.detail)),
            headers=headers,
        )
        return respond(request, error)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems, code = [], "invalid_request"
        for item in exc.errors()[:5]:
            location = [str(part) for part in item.get("loc", ()) if part != "body"]
            if location and location[-1] in codes:
                code = codes[location[-1]]
            where = ".".join(location)
            problems.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return respond(request, RequestError(400, code, "; ".join(problems) or "invalid request"))

    async def unexpected(request: Request, _exc: Exception) -> Response:
        return respond(request, internal_error)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
