"""A lean HTTP/1.1 keep-alive load generator (asyncio, raw sockets), so the client adds little to latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def build_request(host: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _worker(host: str, port: int, requests: Iterable[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in requests:
            start = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
    finally:
        writer.close()


async def _run(host: str, port: int, request: bytes, total: int, concurrency: int) -> LoadResult:
    per_worker = total // concurrency
    return await _run_each(host, port, [[request] * per_worker for _ in range(concurrency)])


async def _run_each(host: str, port: int, per_connection: Sequence[Sequence[bytes]]) -> LoadResult:
    """One connection per list, each sending its requests in turn."""
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, requests, latencies) for requests in per_connection))
    return LoadResult(sum(map(len, per_connection)), time.perf_counter() - start, latencies)


def run_distinct(host: str, port: int, requests: Sequence[bytes], *, concurrency: int) -> LoadResult:
    """Every request sent once (requests that must not repeat, such as sealed ones), over `concurrency`
    connections; no warm-up."""
    per_connection = [requests[index::concurrency] for index in range(concurrency)]
    return asyncio.run(_run_each(host, port, per_connection))


def run_load(host: str, port: int, path: str, body: bytes, *, total: int, concurrency: int) -> LoadResult:
    request = build_request(f"{host}:{port}", path, body)
    asyncio.run(_run(host, port, request, max(concurrency, total // 10), concurrency))  # warm-up
    return asyncio.run(_run(host, port, request, total, concurrency))
