"""A TCP proxy between the relays and anvil that can take the RPC node "down" on demand.

The chaos run needs an RPC outage that only the relays see: the user, the miner and the checker talk to
anvil directly. During an outage the proxy stops listening (new connections are refused) and resets every
open connection, which is what a relay sees when its node restarts or its provider drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

from verinfer.processes import free_port


class RpcProxy:
    """Forwards 127.0.0.1:`port` to `upstream` (host, port) in a background event loop."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.outages = 0
        self.down_seconds = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rpc-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: asyncio keeps only weak ones

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    def start(self) -> RpcProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._open):
            transport.abort()  # RST: the relay's keep-alive connection dies mid-request
        self._open.clear()

    def go_down(self) -> None:
        """Start an outage: refuse new connections and reset open ones."""
        self.outages += 1
        self._call(self._stop_listening())

    def come_up(self) -> None:
        self._call(self._listen())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair: tuple[Any, Any] = (writer.transport, up_writer.transport)
        self._open.update(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for transport in pair:
                self._open.discard(transport)
                transport.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop_listening())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
