"""`verinfer proxy`, on the parent instance: inside a Nitro enclave the only way in or out is AF_VSOCK.

The server listens on a vsock port (enclave/vsock.py); this proxy accepts TCP and forwards each
connection byte for byte to the enclave's (CID, port). The proxy sees only ciphertext-free HTTP it cannot
forge: receipts are signed inside the enclave, so a proxy can drop traffic but not alter results undetected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from attestation.cli import EXIT_OK, UsageError

log = logging.getLogger("verinfer.proxy")

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


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


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{what} must be HOST:PORT (or CID:PORT), got {text!r}")
    return host, int(port)


def cmd_proxy(args: argparse.Namespace) -> int:
    host, port = _host_port(args.listen, "--listen")
    if args.vsock:
        cid, vport = _host_port(args.vsock, "--vsock")
        if not cid.isdigit():
            raise UsageError("--vsock takes CID:PORT with a numeric CID")
        connect = vsock_connector(int(cid), vport)
        target = f"vsock {cid}:{vport}"
    else:
        upstream_host, upstream_port = _host_port(args.upstream, "--upstream")
        connect = tcp_connector(upstream_host, upstream_port)
        target = f"tcp {args.upstream}"

    async def main() -> None:
        server = await start_proxy(host, port, connect)
        print(f"proxy: {args.listen} -> {target}", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return EXIT_OK


def register(subparsers: Any) -> None:
    proxy = subparsers.add_parser("proxy", help="forward TCP to an enclave's vsock port (runs on the parent)")
    proxy.add_argument("--listen", required=True, metavar="HOST:PORT")
    target = proxy.add_mutually_exclusive_group(required=True)
    target.add_argument("--vsock", metavar="CID:PORT")
    target.add_argument("--upstream", metavar="HOST:PORT", help="forward to TCP instead (testing)")
    proxy.set_defaults(handler=cmd_proxy)
