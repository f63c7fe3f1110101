"""vsock plumbing: inside a Nitro enclave the only way in or out is AF_VSOCK.

The server listens on a vsock port; `verinfer proxy` on the parent instance accepts TCP and forwards each
connection byte for byte to the enclave's (CID, port). The proxy sees only ciphertext-free HTTP it cannot
forge: receipts are signed inside the enclave, so a proxy can drop traffic but not alter results undetected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("verinfer.proxy")
VMADDR_CID_ANY = 0xFFFFFFFF

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def vsock_listener(port: int, cid: int = VMADDR_CID_ANY, backlog: int = 128) -> socket.socket:
    """A listening AF_VSOCK socket; raises OSError with a clear message where vsock is unavailable."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError("this platform has no AF_VSOCK sockets")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def vsock_connector(cid: int, port: int) -> Connector:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (cid, port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    return connect


def tcp_connector(host: str, port: int) -> Connector:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port)

    return connect


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof() if writer.can_write_eof() else writer.close()


async def _forward(
    connect: Connector, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    try:
        upstream_reader, upstream_writer = await connect()
    except OSError as exc:
        log.warning("upstream unavailable: %s", exc)
        client_writer.close()
        return
    await asyncio.gather(_pump(client_reader, upstream_writer), _pump(upstream_reader, client_writer))
    for writer in (client_writer, upstream_writer):
        writer.close()


async def start_proxy(host: str, port: int, connect: Connector) -> asyncio.Server:
    """Listen on TCP host:port and forward every connection through `connect`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _forward(connect, reader, writer)

    return await asyncio.start_server(handle, host, port)
