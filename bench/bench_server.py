"""Signed /infer vs raw onnxruntime vs a bare FastAPI echo of the same body vs the server as it was at a
baseline commit (before the HTTP edge), all in one run.

Run: `make bench` (or `.venv/bin/python -m bench.bench_server [REQUESTS] [--baseline-ref REF]`).
Goals: signed /infer >= 0.9x the echo's throughput; receipt overhead <= 100 us; p50 <= 1 ms at concurrency 1;
throughput no lower than the baseline commit's (ratio >= 1.0 within the run-to-run noise, about +-5%).
The load generator is bench/loadgen.py (keep-alive HTTP/1.1, raw asyncio sockets) on the same machine.
The baseline is the tree at REF (git archive), served by its own `python -m enclave serve`; before and
after are measured alternately, five rounds, and the median throughput of each is compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from verinfer.processes import free_port, running_server, stop, wait_ready

# The last commit before the HTTP edge (issue 10): the "before" of the throughput comparison.
BASELINE_REF = "8432830"
ROUNDS = 5

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


@contextmanager
def baseline_server(ref: str, pki: str) -> Iterator[str]:
    """The enclave server exactly as committed at `ref`, in a temporary tree, on a free port."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        port = free_port()
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "enclave",
                    "serve",
                    "--nsm",
                    "sim",
                    "--pki-dir",
                    pki,
                    "--port",
                    str(port),
                ],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": tree},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, process)
                yield url
            finally:
                stop(process)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def alternating(targets: dict[str, int], body: bytes, load: dict[str, int]) -> dict[str, LoadResult]:
    """ROUNDS of each target in turn (so drift hits all alike); the run with the median throughput."""
    runs: dict[str, list[LoadResult]] = {label: [] for label in targets}
    for _ in range(ROUNDS):
        for label, port in targets.items():
            runs[label].append(run_load("127.0.0.1", port, "/infer", body, **load))
    return {label: sorted(r, key=lambda x: x.throughput)[len(r) // 2] for label, r in runs.items()}


def row(label: str, result: LoadResult) -> str:
    return f"  {label:<26} {result.p50 * 1000:>9.0f} {result.p99 * 1000:>9.0f} {result.throughput:>10.0f}"


def main(total: int = 3000, baseline_ref: str = BASELINE_REF) -> None:
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
        with (
            tempfile.TemporaryDirectory() as pki,
            running_server("--nsm", "sim", "--pki-dir", pki) as url,
            baseline_server(baseline_ref, pki) as before_url,
        ):
            servers = {
                "signed /infer (now)": port_of(url),
                f"signed /infer ({baseline_ref})": port_of(before_url),
            }
            print(f"\nHTTP over loopback, {total} requests per run (latency in us, throughput in req/s)")
            print(f"  {'target':<30} {'p50':>9} {'p99':>9} {'req/s':>10}")
            for name, (_, data) in CASES.items():
                body = orjson.dumps({"model": name, "inputs": data})
                print(f"{name} (body {len(body)} bytes)")
                results = {}
                for concurrency in (1, 8):
                    load = {"total": total, "concurrency": concurrency}
                    echo_result = run_load("127.0.0.1", echo_port, "/echo", body, **load)
                    idiomatic = run_load("127.0.0.1", echo_port, "/echo-idiomatic", body, **load)
                    measured = alternating(servers, body, load)
                    now, before = measured.values()
                    results[concurrency] = (echo_result, now, idiomatic, before)
                    print(row(f"echo (orjson), c={concurrency}", echo_result))
                    print(row(f"echo (idiomatic), c={concurrency}", idiomatic))
                    for label, result in measured.items():
                        print(row(f"{label}, c={concurrency}", result))
                ratio = min(results[c][1].throughput / results[c][0].throughput for c in results)
                idiomatic_ratio = min(results[c][1].throughput / results[c][2].throughput for c in results)
                vs_before = min(results[c][1].throughput / results[c][3].throughput for c in results)
                verdicts.append((name, ratio, idiomatic_ratio, vs_before, results[1][1].p50, overheads[name]))
    finally:
        stop(echo)

    print(
        "\ngoals (throughput: the worse of c=1 and c=8; >= 0.9x the echoes, >= 1.0x the baseline within"
        " ~5% noise; p50 at c=1 <= 1 ms; receipt <= 100 us)"
    )
    print(
        f"  {'model':<14} {'vs orjson echo':>16} {'vs idiomatic echo':>19} {'vs ' + baseline_ref:>16}"
        f" {'p50 c=1':>14} {'receipt':>14}"
    )
    for name, ratio, idiomatic_ratio, vs_before, p50, overhead in verdicts:
        print(
            f"  {name:<14} {ratio:>9.2f}x {'PASS' if ratio >= 0.9 else 'FAIL':>5} "
            f"{idiomatic_ratio:>12.2f}x {'PASS' if idiomatic_ratio >= 0.9 else 'FAIL':>5} "
            f"{vs_before:>9.2f}x {'PASS' if vs_before >= 0.95 else 'FAIL':>5} "
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("requests", nargs="?", type=int, default=3000, help="requests per run")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit to compare against")
    options = parser.parse_args()
    main(options.requests, options.baseline_ref)
