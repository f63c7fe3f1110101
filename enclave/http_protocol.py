"""uvicorn's httptools protocol, with each answer's head and body written to the socket in one call, and
small inference requests answered without ASGI.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body when it
sends `http.response.body`: two send(2) calls per answer. On loopback and vsock each one runs the receiver's
network stack and wakes it, so for a small signed answer the second write costs about as much as hashing
the inputs. Here a write is held until the next one, which is written with it (an answer's head goes out
with its body, at once), or until the end of the loop turn; closing the transport writes what is held
first.

Direct answers: a request the edge's `direct` accepts (POST /infer, V2 infer or the OHTTP gateway, with a
body of a declared length up to 64 KiB and no content coding; protocol/edge.py) is answered here, by the
same handler, with the same headers, metrics and access log, but without uvicorn's request cycle, the ASGI
scope and messages and the edge's ASGI adapter: about 14 % more signed requests a second under 16
connections and 5 % under one (docs/BENCHMARKS.md). Anything else (a pipelined request behind an
unfinished one, Expect: 100-continue, chunked or compressed bodies, HTTP/1.0, upgrades) takes uvicorn's
own path, as does everything when the server adds CORS headers. Everything else is uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from protocol.edge import CLIENT_CLOSED, DirectExchange, Headers, HttpEdge


class CoalescingTransport:
    """A transport that holds a write until the next one (an answer's head until its body) or, at the
    latest, the end of the loop turn, and then writes both at once."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            joined, self._held = self._held + data, None
            if not self._transport.is_closing():  # closed meanwhile (a refused pipelined request): drop it
                self._transport.write(joined)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Arrivals:
    """How many inference requests this process has received (headers read) and not yet answered.

    The dynamic batcher (enclave/batcher.py) reads it: when every such request is already waiting for a
    batch, nobody else can join this turn, so the batch runs at once instead of one loop turn later (what
    a lone request would otherwise pay for batching).
    """

    __slots__ = ("count", "is_inference")

    def __init__(self, is_inference: Callable[[str, str], bool] | None = None) -> None:
        self.count = 0
        # (method, path) -> whether the batcher will see it; create_app sets it from its fast route.
        self.is_inference = is_inference

    def __call__(self) -> int:
        return self.count


class _NoEvent:
    """uvicorn's protocol sets its cycle's message event when the connection drops; a direct answer waits on
    no event."""

    __slots__ = ()

    def set(self) -> None:
        return None


_NO_EVENT = _NoEvent()


class _DirectCycle:
    """A request the protocol answers itself, in place of uvicorn's RequestResponseCycle: the attributes
    uvicorn's protocol reads and writes on its cycle (`response_complete`, `disconnected`, `keep_alive`,
    `message_event`), and the body as it comes."""

    __slots__ = ("body", "disconnected", "exchange", "keep_alive", "response_complete")

    message_event = _NO_EVENT

    def __init__(self, exchange: DirectExchange, keep_alive: bool) -> None:
        self.exchange = exchange
        self.keep_alive = keep_alive  # cleared by a graceful shutdown: the answer then closes the connection
        self.body: list[bytes] = []
        self.disconnected = False
        self.response_complete = False


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Pass as uvicorn.Config(http=...), or `counting_protocol(arrivals, edge)` to count arrivals and answer
    the edge's direct routes too."""

    arrivals: Arrivals | None = None
    edge: HttpEdge | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._counted: list[Any] = []  # this connection's counted requests (pipelining may queue several)
        wrapped: Any = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(wrapped)

    def on_headers_complete(self) -> None:
        exchange = None if self.edge is None else self._direct()
        if exchange is not None:
            cycle: Any = _DirectCycle(exchange, self.parser.should_keep_alive())
            self.cycle = cycle
            self._count(cycle, exchange.method, exchange.path)
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not so for an upgrade
            self._count(cycle, self.scope["method"], self.scope["path"])

    def _direct(self) -> DirectExchange | None:
        """The request's exchange if it can be answered here (see the module docstring), else None."""
        assert self.edge is not None
        parser = self.parser
        previous = self.cycle
        if (
            (previous is not None and not previous.response_complete)
            or self.expect_100_continue
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
        ):
            return None
        raw_path = httptools.parse_url(self.url).path
        if b"%" in raw_path or not raw_path.isascii():  # escapes: left to uvicorn's decoding
            return None
        return self.edge.direct(parser.get_method().decode("ascii"), raw_path.decode("ascii"), self.headers)

    def _count(self, cycle: Any, method: str, path: str) -> None:
        arrivals = self.arrivals
        if arrivals is not None and arrivals.is_inference is not None and arrivals.is_inference(method, path):
            arrivals.count += 1
            self._counted.append(cycle)

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is _DirectCycle:
            cycle.body.append(body)  # at most the declared length, within the edge's limit
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is _DirectCycle:
            task = self.loop.create_task(self._answer(cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)  # a graceful shutdown waits for it, as for uvicorn's own
            return
        super().on_message_complete()

    async def _answer(self, cycle: _DirectCycle) -> None:
        exchange = cycle.exchange
        body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
        status, headers, payload = await exchange.answer(body)
        if cycle.disconnected:
            status = CLIENT_CLOSED
        else:
            self._write_whole(status, headers, payload, cycle.keep_alive)
            cycle.response_complete = True
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()
        exchange.finish(status)

    def _write_whole(self, status: int, headers: Headers, payload: bytes, keep_alive: bool) -> None:
        """The whole answer in one write: status line, uvicorn's default headers (Date), ours, the body."""
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", payload)
        transport: Any = self.transport
        transport.write(b"".join(head))
        transport.flush()  # nothing follows in this turn: no reason to hold it

    def on_response_complete(self) -> None:
        if self._counted:
            self._uncount(done_only=True)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._uncount(done_only=False)
        super().connection_lost(exc)

    def _uncount(self, *, done_only: bool) -> None:
        assert self.arrivals is not None
        kept = [cycle for cycle in self._counted if done_only and not cycle.response_complete]
        self.arrivals.count -= len(self._counted) - len(kept)
        self._counted = kept


def counting_protocol(arrivals: Arrivals, edge: HttpEdge | None = None) -> type[CoalescingHttpToolsProtocol]:
    """The protocol class for one server, counting its inference arrivals in `arrivals` and answering
    `edge`'s direct routes itself (None: every request through the ASGI app)."""
    return type(
        "CountingHttpToolsProtocol", (CoalescingHttpToolsProtocol,), {"arrivals": arrivals, "edge": edge}
    )
