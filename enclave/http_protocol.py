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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Pass as uvicorn.Config(http=...)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(wrapped)
