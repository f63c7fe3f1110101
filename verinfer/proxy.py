"""`verinfer proxy`, on the parent instance: inside a Nitro enclave the only way in or out is AF_VSOCK.

The server listens on a vsock port (enclave/vsock.py); this proxy accepts TCP and forwards each
connection byte for byte to the enclave's (CID, port). The proxy sees only ciphertext-free HTTP it cannot
forge: receipts are signed inside the enclave, so a proxy can drop traffic but not alter results undetected.
Each connection is bounded (ProxyLimits: connect timeout, idle timeout, total duration, byte cap); one
that passes a bound is closed on both sides, with the reason logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
        except BaseException:  # also the connect timeout's cancellation
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    return connect


def tcp_connector(host: str, port: int) -> Connector:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port)

    return connect


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Per-connection bounds: a stuck, idle, endless or huge connection is closed (both sides) and logged."""

    connect_timeout_s: float = 5.0  # to reach the upstream (vsock or TCP)
    idle_timeout_s: float = 60.0  # with no byte in either direction
    max_duration_s: float = 300.0  # from accept to close, however busy
    max_bytes: int = 64 * 1024 * 1024  # both directions together

    def __post_init__(self) -> None:
        if min(self.connect_timeout_s, self.idle_timeout_s, self.max_duration_s, self.max_bytes) <= 0:
            raise ValueError("proxy limits must be positive")


class _Connection:
    """What both pumps of one proxied connection share: bytes so far, last activity."""

    def __init__(self, limits: ProxyLimits, now: float) -> None:
        self.limits = limits
        self.started = now
        self.last_activity = now
        self.bytes = 0
        self.over_cap = False

    def admit(self, size: int, now: float) -> bool:
        """Count `size` more bytes; False when that would pass the byte cap."""
        if self.bytes + size > self.limits.max_bytes:
            self.over_cap = True
            return False
        self.bytes += size
        self.last_activity = now
        return True


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> None:
    loop = asyncio.get_running_loop()
    try:
        while chunk := await reader.read(65536):
            if not conn.admit(len(chunk), loop.time()):
                return
            writer.write(chunk)
            await writer.drain()
            conn.last_activity = loop.time()  # a peer that reads slowly is still making progress
    except (ConnectionError, OSError):
        pass
    else:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof() if writer.can_write_eof() else writer.close()


async def _supervise(pumps: set[asyncio.Task[None]], conn: _Connection) -> str | None:
    """Wait for both directions to end; the reason to cut the connection if a limit comes first."""
    loop = asyncio.get_running_loop()
    limits = conn.limits
    deadline = conn.started + limits.max_duration_s
    pending = pumps
    while pending:
        if conn.over_cap:
            return f"byte cap of {limits.max_bytes} reached"
        now = loop.time()
        if now >= deadline:
            return f"open for the maximum {limits.max_duration_s:g} s"
        idle_until = conn.last_activity + limits.idle_timeout_s
        if now >= idle_until:
            return f"idle for {limits.idle_timeout_s:g} s"
        _, pending = await asyncio.wait(
            pending, timeout=min(deadline, idle_until) - now, return_when=asyncio.FIRST_COMPLETED
        )
    return f"byte cap of {limits.max_bytes} reached" if conn.over_cap else None


async def _forward(
    connect: Connector,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    limits: ProxyLimits | None = None,
) -> None:
    limits = limits or ProxyLimits()
    peer = _peer(client_writer)
    loop = asyncio.get_running_loop()
    accepted = loop.time()  # the maximum duration counts from here, connecting included
    try:
        async with asyncio.timeout(limits.connect_timeout_s):
            upstream_reader, upstream_writer = await connect()
    except TimeoutError:
        log.warning("%s: closed: upstream not reached within %g s", peer, limits.connect_timeout_s)
        client_writer.transport.abort()
        return
    except OSError as exc:
        log.warning("%s: closed: upstream unavailable: %s", peer, exc)
        client_writer.transport.abort()
        return
    conn = _Connection(limits, accepted)
    pumps = {
        asyncio.create_task(_pump(client_reader, upstream_writer, conn)),
        asyncio.create_task(_pump(upstream_reader, client_writer, conn)),
    }
    try:
        reason = await _supervise(pumps, conn)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    if reason is None:
        for writer in (client_writer, upstream_writer):
            writer.close()
        log.debug("%s: done, %d bytes", peer, conn.bytes)
        return
    for writer in (client_writer, upstream_writer):
        writer.transport.abort()  # not close(): a peer that does not read must not keep it open
    log.warning(
        "%s: closed both sides: %s (%d bytes in %.1f s)", peer, reason, conn.bytes, loop.time() - conn.started
    )


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def start_proxy(
    host: str, port: int, connect: Connector, limits: ProxyLimits | None = None
) -> asyncio.Server:
    """Listen on TCP host:port and forward every connection through `connect`, within `limits`."""
    bounds = limits or ProxyLimits()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _forward(connect, reader, writer, bounds)

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

    try:
        limits = ProxyLimits(
            connect_timeout_s=args.connect_timeout,
            idle_timeout_s=args.idle_timeout,
            max_duration_s=args.max_duration,
            max_bytes=args.max_bytes,
        )
    except ValueError as exc:
        raise UsageError(f"--connect-timeout, --idle-timeout, --max-duration, --max-bytes: {exc}") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        server = await start_proxy(host, port, connect, limits)
        print(
            f"proxy: {args.listen} -> {target} (connect {limits.connect_timeout_s:g} s, idle "
            f"{limits.idle_timeout_s:g} s, at most {limits.max_duration_s:g} s and {limits.max_bytes} bytes "
            "per connection)",
            file=sys.stderr,
            flush=True,
        )
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
    defaults = ProxyLimits()
    proxy.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.connect_timeout_s,
        metavar="S",
        help="seconds to reach the upstream",
    )
    proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout_s,
        metavar="S",
        help="close a connection with no traffic either way for this long",
    )
    proxy.add_argument(
        "--max-duration",
        type=float,
        default=defaults.max_duration_s,
        metavar="S",
        help="close any connection open this long",
    )
    proxy.add_argument(
        "--max-bytes",
        type=int,
        default=defaults.max_bytes,
        metavar="N",
        help="close a connection after this many bytes (both directions together)",
    )
    proxy.set_defaults(handler=cmd_proxy)
