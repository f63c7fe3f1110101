"""uvicorn's httptools protocol, with each answer's head and body written to the socket in one call.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body when it
sends `http.response.body`: two send(2) calls per answer. On loopback and vsock each one runs the receiver's
network stack and wakes it, so for a small signed answer the second write costs about as much as hashing
the inputs. Here a write is held until the next one, which is written with it (an answer's head goes out
with its body, at once), or until the end of the loop turn; closing the transport writes what is held
first. Everything else is uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Pass as uvicorn.Config(http=...), or `counting_protocol(arrivals)` to count arrivals too."""

    arrivals: Arrivals | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._counted: list[Any] = []  # this connection's counted requests (pipelining may queue several)
        wrapped: Any = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(wrapped)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        arrivals, cycle = self.arrivals, self.cycle
        started = cycle is not None and cycle.scope is self.scope  # not so for an upgrade
        if arrivals is None or arrivals.is_inference is None or not started:
            return
        if arrivals.is_inference(self.scope["method"], self.scope["path"]):
            arrivals.count += 1
            self._counted.append(cycle)

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


def counting_protocol(arrivals: Arrivals) -> type[CoalescingHttpToolsProtocol]:
    """The protocol class for one server, counting its inference arrivals in `arrivals`."""
    return type("CountingHttpToolsProtocol", (CoalescingHttpToolsProtocol,), {"arrivals": arrivals})
