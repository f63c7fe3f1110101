"""Signed /infer vs raw onnxruntime vs a bare FastAPI echo of the same body, all in one run.

Run: `make bench` (or `.venv/bin/python bench/bench_server.py [REQUESTS]`).
Goals: signed /infer >= 0.9x the echo's throughput; receipt overhead <= 100 us; p50 <= 1 ms at concurrency 1.
The load generator is bench/loadgen.py (keep-alive HTTP/1.1, raw asyncio sockets) on the same machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from bench.loadgen import LoadResult, run_load
from enclave.runtime import _session_options
from enclave.signer import EnclaveKey
from protocol.hashing import keccak256
from protocol.receipts import Receipt, sign_receipt
from protocol.tensors import encode_tensors
from verinfer.processes import free_port, running_server, stop

REPO = Path(__file__).resolve().parent.parent
MNIST = np.load(REPO / "models" / "data" / "mnist-eval.npz")
CASES = {
    "iris-ols": ("features", [[5.1, 3.5, 1.4]]),
    "iris-mlp": ("features", [[6.7, 3.0, 5.2, 2.3]]),
    "mnist-lenet": ("image", (MNIST["x"][:1, None] / 255.0).round(4).tolist()),
}


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    for _ in range(runs // 10):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def in_process(name: str, runs: int) -> tuple[list[float], list[float]]:
    """(raw onnxruntime run times, receipt overhead times), in microseconds."""
    input_name, data = CASES[name]
    session = ort.InferenceSession(str(REPO / "models" / f"{name}.onnx"), _session_options())
    feed = {input_name: np.asarray(data, dtype=np.float32)}
    output_names = [o.name for o in session.get_outputs()]
    raw = timed(lambda: session.run(output_names, feed), runs)
    outputs = list(zip(output_names, session.run(output_names, feed), strict=True))
    inputs = list(feed.items())
    key, model_hash, request_id = EnclaveKey(), os.urandom(32), os.urandom(32)

    def receipt() -> object:
        return sign_receipt(
            key,
            Receipt(
                request_id,
                model_hash,
                keccak256(encode_tensors(inputs)),
                keccak256(encode_tensors(outputs)),
                time.time_ns() // 1_000_000,
            ),
        )

    return raw, timed(receipt, runs)


def start_echo(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.echo_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def row(label: str, result: LoadResult) -> str:
    return f"  {label:<26} {result.p50 * 1000:>9.0f} {result.p99 * 1000:>9.0f} {result.throughput:>10.0f}"


def main(total: int = 3000) -> None:
    print(f"{'model':<12} {'raw ORT p50 us':>15} {'p99 us':>8} {'receipt p50 us':>15} {'p99 us':>8}")
    overheads = {}
    for name in CASES:
        raw, receipt = in_process(name, 2000)
        overheads[name] = statistics.median(receipt)
        print(
            f"{name:<12} {statistics.median(raw):>15.1f} {p99(raw):>8.1f} {overheads[name]:>15.1f} "
            f"{p99(receipt):>8.1f}"
        )

    echo_port = free_port()
    echo = start_echo(echo_port)
    verdicts = []
    try:
        wait_ready_echo(echo_port, echo)
        with tempfile.TemporaryDirectory() as pki, running_server("--nsm", "sim", "--pki-dir", pki) as url:
            port = int(url.rsplit(":", 1)[1])
            print(f"\nHTTP over loopback, {total} requests per run (latency in us, throughput in req/s)")
            print(f"  {'target':<26} {'p50':>9} {'p99':>9} {'req/s':>10}")
            for name, (_, data) in CASES.items():
                body = orjson.dumps({"model": name, "inputs": data})
                print(f"{name} (body {len(body)} bytes)")
                results = {}
                for concurrency in (1, 8):
                    load = {"total": total, "concurrency": concurrency}
                    echo_result = run_load("127.0.0.1", echo_port, "/echo", body, **load)
                    idiomatic = run_load("127.0.0.1", echo_port, "/echo-idiomatic", body, **load)
                    infer_result = run_load("127.0.0.1", port, "/infer", body, **load)
                    results[concurrency] = (echo_result, infer_result, idiomatic)
                    print(row(f"echo (orjson), c={concurrency}", echo_result))
                    print(row(f"echo (idiomatic), c={concurrency}", idiomatic))
                    print(row(f"signed /infer, c={concurrency}", infer_result))
                ratio = min(results[c][1].throughput / results[c][0].throughput for c in results)
                idiomatic_ratio = min(results[c][1].throughput / results[c][2].throughput for c in results)
                verdicts.append((name, ratio, idiomatic_ratio, results[1][1].p50, overheads[name]))
    finally:
        stop(echo)

    print("\ngoals (throughput: the worse of c=1 and c=8, >= 0.9x; p50 at c=1 <= 1 ms; receipt <= 100 us)")
    print(f"  {'model':<14} {'vs orjson echo':>16} {'vs idiomatic echo':>19} {'p50 c=1':>14} {'receipt':>14}")
    for name, ratio, idiomatic_ratio, p50, overhead in verdicts:
        print(
            f"  {name:<14} {ratio:>9.2f}x {'PASS' if ratio >= 0.9 else 'FAIL':>5} "
            f"{idiomatic_ratio:>12.2f}x {'PASS' if idiomatic_ratio >= 0.9 else 'FAIL':>5} "
            f"{p50:>7.3f} ms {'PASS' if p50 <= 1 else 'FAIL':>5} "
            f"{overhead:>6.1f} us {'PASS' if overhead <= 100 else 'FAIL':>5}"
        )


def wait_ready_echo(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("echo server exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("echo server did not start")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
