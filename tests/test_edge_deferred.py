"""The edge's deferred fast replies (protocol/edge.py `Deferred`): a body made after the handler returned,
streamed or whole, while the client is watched. Driven with ASGI messages, in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

import orjson
import pytest

from protocol.edge import Deferred, FastHandler, Headers, HttpEdge
from protocol.errors import RequestError


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the fast route answers")


class Exchange:
    """One request to an edge whose fast route answers with `handler`; the client may leave after
    `leave_after` body messages."""

    def __init__(self, handler: FastHandler, leave_after: int | None = None) -> None:
        self.handler = handler
        self.leave_after = leave_after
        self.sent: list[dict[str, Any]] = []
        self.observed: list[int] = []
        self.left = asyncio.Event()

    async def run(self, path: str = "/v1/chat/completions") -> None:
        edge = HttpEdge(
            _no_app,
            max_body=1024,
            fast_route=lambda method, p: self.handler,
            observe=lambda p, status, seconds: self.observed.append(status),
        )
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"2")]}
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await self.left.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            self.sent.append(dict(message))
            bodies = sum(m["type"] == "http.response.body" for m in self.sent)
            if self.leave_after is not None and bodies >= self.leave_after:
                self.left.set()

        await asyncio.wait_for(edge(scope, receive, send), 10)

    @property
    def start(self) -> dict[str, Any]:
        return self.sent[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self.sent[1:]


class Events:
    """An SSE source that records whether it was closed, as a generation's cancellation hangs on that."""

    def __init__(self, n: int, pause: float = 0.0) -> None:
        self.n, self.pause = n, pause
        self.closed = False
        self.made = 0

    async def __call__(self) -> AsyncGenerator[bytes, None]:
        try:
            for i in range(self.n):
                await asyncio.sleep(self.pause)
                self.made += 1
                yield b"data: %d\n\n" % i
        finally:
            self.closed = True


def handler_of(reply: Any, status: int = 200, headers: Headers | None = None) -> FastHandler:
    async def handler(body: bytes, request_headers: Headers, salt: bytes | None) -> Any:
        return status, reply, list(headers or [])

    return handler


def test_a_streamed_reply_sends_each_chunk_as_it_comes_and_ends_the_body() -> None:
    events = Events(3)
    sse = [(b"content-type", b"text/event-stream")]
    exchange = Exchange(handler_of(Deferred(events()), headers=sse))
    asyncio.run(exchange.run())
    assert exchange.start["status"] == 200
    assert exchange.headers[b"content-type"] == b"text/event-stream"
    assert b"content-length" not in exchange.headers  # the chunked coding: the length is not known
    assert b"x-request-id" in exchange.headers
    assert [m["body"] for m in exchange.bodies] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["more_body"] for m in exchange.bodies] == [True, True, True, False]
    assert events.closed and exchange.observed == [200]


def test_a_client_that_leaves_mid_stream_closes_the_source_and_is_logged_499() -> None:
    events = Events(1000, pause=0.001)
    exchange = Exchange(handler_of(Deferred(events())), leave_after=2)
    asyncio.run(exchange.run())
    assert events.closed and events.made < 1000  # the work behind the stream stopped
    assert not any(m.get("more_body") is False for m in exchange.bodies)  # never finished as if complete
    assert exchange.observed == [499]


def test_a_client_that_leaves_before_a_whole_body_cancels_its_making() -> None:
    cancelled = asyncio.Event()

    async def slow() -> AsyncGenerator[bytes, None]:
        try:
            await asyncio.sleep(30)
            yield b"{}"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    exchange = Exchange(handler_of(Deferred(slow(), whole=True)))

    async def scenario() -> None:
        task = asyncio.ensure_future(exchange.run())
        await asyncio.sleep(0.05)
        exchange.left.set()
        await task

    asyncio.run(scenario())
    assert cancelled.is_set() and exchange.sent == [] and exchange.observed == [499]


def test_a_whole_reply_is_sent_with_its_length() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b'{"ok":true}'

    exchange = Exchange(handler_of(Deferred(body(), whole=True)))
    asyncio.run(exchange.run())
    assert exchange.start["status"] == 200
    assert exchange.headers[b"content-length"] == b"11"
    assert exchange.headers[b"content-type"] == b"application/json"
    assert [m["body"] for m in exchange.bodies] == [b'{"ok":true}']


@pytest.mark.parametrize(
    ("raised", "status", "shape"),
    [
        (RequestError(429, "queue_full", "busy", headers={"Retry-After": "1"}), 429, "rate_limit_error"),
        (KeyError("a bug"), 500, "server_error"),
    ],
)
def test_a_whole_reply_that_fails_is_answered_in_the_routes_error_shape(
    raised: Exception, status: int, shape: str
) -> None:
    async def failing() -> AsyncGenerator[bytes, None]:
        raise raised
        yield b""  # pragma: no cover  (makes this an async generator)

    exchange = Exchange(handler_of(Deferred(failing(), whole=True)))
    asyncio.run(exchange.run("/v1/completions"))
    assert exchange.start["status"] == status
    error = orjson.loads(exchange.bodies[0]["body"])["error"]
    assert error["type"] == shape
    if status == 429:
        assert exchange.headers[b"retry-after"] == b"1"
    else:
        assert "nothing was signed" in error["message"] and "a bug" not in error["message"]
    assert exchange.observed == [status]
