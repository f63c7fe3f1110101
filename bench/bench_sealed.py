"""Sealed against clear /infer on one server, in one run: what Oblivious HTTP sealing adds per request.

Run: `.venv/bin/python -m bench.bench_sealed [--requests N]` (about a minute).

One `verinfer serve --nsm sim --no-llm` answers both: clear `POST /infer` (iris-mlp, one row), and the same
body sealed to the attested key and posted to `/.well-known/ohttp-gateway` (AES-128-GCM, a fresh salt
each). Every sealed request must be unique (the gateway refuses replays), so they are all encapsulated
before the clock starts: the figures are the server's and the wire's, not the client's, whose own cost
(one X25519 key pair and exchange, a few AEAD calls) is printed apart. Targets alternate, five rounds
at 1 and at 16 connections, and each one's median-throughput run is kept; the load generator
(bench/loadgen.py) shares the 2-core machine with the server, so ratios are what to read.

The gateway's own work per request (open the request, parse Binary HTTP, encode and seal the answer) is
also timed in process, without HTTP. Goal: sealing adds at most 100 us per request (p50 at one connection,
sealed minus clear).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable

import httpx
import orjson

from bench.bench_load import median_run
from bench.bench_server import ROUNDS, port_of
from bench.loadgen import LoadResult, build_request, run_distinct
from protocol import bhttp, ohttp
from protocol.hpke import SealingKey
from verinfer.client_sealed import seal_request
from verinfer.processes import running_server

BODY = orjson.dumps({"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]})
GATEWAY = "/.well-known/ohttp-gateway"
CONCURRENCY = (1, 16)
GOAL_US = 100.0
CLEAR, SEALED = "clear /infer", "sealed /infer (OHTTP)"


def per_call_us(fn: Callable[[], object], runs: int) -> float:
    """Median of `runs` timings of fn, in microseconds."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return sorted(samples)[len(samples) // 2]


def in_process(runs: int) -> tuple[float, float]:
    """(gateway work per request, client work per request) in us, without HTTP or a model."""
    gateway = ohttp.Gateway(SealingKey.generate(), 1)
    answer = bhttp.encode_response(
        bhttp.BhttpResponse(200, ((b"content-type", b"application/json"),), BODY * 3)
    )
    requests = [seal_request(gateway.config, "/infer", BODY).enc_request for _ in range(runs)]
    pending = iter(requests)

    def gateway_side() -> None:
        inner, sealer = gateway.decapsulate(next(pending))
        bhttp.decode_request(inner)
        sealer.seal(answer)

    return per_call_us(gateway_side, runs), per_call_us(
        lambda: seal_request(gateway.config, "/infer", BODY), runs
    )


def sealed_requests(url: str, count: int) -> list[bytes]:
    keys = httpx.get(url + GATEWAY).content
    config = ohttp.decode_key_configs(keys)[0]
    host = url.removeprefix("http://")
    return [
        build_request(
            host, GATEWAY, seal_request(config, "/infer", BODY).enc_request, ohttp.REQUEST_MEDIA_TYPE
        )
        for _ in range(count)
    ]


def check_answers(url: str) -> None:
    """Both routes answer the same outputs before anything is timed."""
    config = ohttp.decode_key_configs(httpx.get(url + GATEWAY).content)[0]
    exchange = seal_request(config, "/infer", BODY)
    answer = httpx.post(
        url + GATEWAY, content=exchange.enc_request, headers={"content-type": ohttp.REQUEST_MEDIA_TYPE}
    )
    sealed = orjson.loads(exchange.open(answer.status_code, answer.content))["outputs"]
    clear = httpx.post(url + "/infer", content=BODY).json()["outputs"]
    if sealed != clear:
        raise SystemExit(f"sealed and clear answers differ: {sealed} != {clear}")


def measure(url: str, total: int, concurrency: int) -> dict[str, list[LoadResult]]:
    port, host = port_of(url), url.removeprefix("http://")
    clear = build_request(host, "/infer", BODY)
    runs: dict[str, list[LoadResult]] = {CLEAR: [], SEALED: []}
    run_distinct(
        "127.0.0.1", port, [clear] * max(concurrency, total // 10), concurrency=concurrency
    )  # warm-up
    for index in range(ROUNDS):
        sealed = sealed_requests(url, total)  # before the clock: the client's sealing is not timed
        order = [CLEAR, SEALED] if index % 2 == 0 else [SEALED, CLEAR]
        for label in order:
            requests = [clear] * total if label == CLEAR else sealed
            runs[label].append(run_distinct("127.0.0.1", port, requests, concurrency=concurrency))
    return runs


def row(label: str, result: LoadResult) -> str:
    return f"  {label:<30} {result.p50:>8.3f} {result.p99:>8.3f} {result.throughput:>9.0f}"


def main(total: int) -> int:
    gateway_us, client_us = in_process(2000)
    print(f"in process: gateway work {gateway_us:.1f} us per request (open, Binary HTTP, seal the answer);")
    print(f"            client work {client_us:.1f} us per request (encapsulation; not timed below)")
    print(f"{total} requests per run, median-throughput run of {ROUNDS} alternating rounds (latency in ms)")
    print(f"  {'target':<30} {'p50':>8} {'p99':>8} {'req/s':>9}")
    results: dict[int, dict[str, LoadResult]] = {}
    with (
        tempfile.TemporaryDirectory() as pki,
        running_server("--nsm", "sim", "--pki-dir", pki, "--no-llm") as url,
    ):
        check_answers(url)
        for concurrency in CONCURRENCY:
            runs = measure(url, total, concurrency)
            results[concurrency] = {label: median_run(r) for label, r in runs.items()}
            for label, result in results[concurrency].items():
                print(row(f"{label}, c={concurrency}", result))
    added = (results[1][SEALED].p50 - results[1][CLEAR].p50) * 1000
    print("\nsealed / clear:")
    for concurrency in CONCURRENCY:
        sealed, clear = results[concurrency][SEALED], results[concurrency][CLEAR]
        print(
            f"  c={concurrency:<3} throughput {sealed.throughput / clear.throughput:.2f}x, "
            f"p50 +{(sealed.p50 - clear.p50) * 1000:.0f} us, p99 +{(sealed.p99 - clear.p99) * 1000:.0f} us"
        )
    met = added <= GOAL_US
    verdict = "PASS" if met else "FAIL"
    print(f"goal: sealing adds <= {GOAL_US:.0f} us per request (p50, c=1): +{added:.0f} us {verdict}")
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    sys.exit(main(parser.parse_args().requests))
