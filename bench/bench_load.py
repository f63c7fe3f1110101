"""Signed /infer against the unsigned server a user would otherwise run, at 1 and at 16 connections.

Run: `.venv/bin/python -m bench.bench_load [--requests N] [--models M ...] [--serve-arg=ARG ...]`
(on a shared machine, under `nice -n 10`; about two minutes with the defaults).

Targets, both served by uvicorn with one worker, uvloop and httptools, on free loopback ports:
- signed: `verinfer serve --nsm sim --no-llm` (simulated NSM, fresh PKI in a temporary directory), plus any
  `--serve-arg` given (each split like shell words, e.g. `--serve-arg="--infer-max-batch 0"`), as is:
  its access log goes to a file, as `running_server` arranges;
- unsigned: bench/unsigned_app.py, an idiomatic FastAPI + pydantic + onnxruntime server for the same
  models/*.onnx with the same session options (no access log, the best case for it).

Each model's request body (bench.bench_server.CASES: one row, or one 28x28 image) is the same bytes for
both servers. Before any timing, both answer it once and their outputs must agree (np.allclose), so the two
do the same work. Then, per concurrency, the targets are measured alternately, five rounds (as
bench.bench_server.alternating does, but the order flipped every round), and each one's median-throughput
run is kept; the goals table also shows the range of the five paired (same-round) ratios, the noise.

The load generator (bench/loadgen.py: keep-alive HTTP/1.1 over raw asyncio sockets, one process) runs on the
same machine as the servers, so on the 2-core development machine it holds about one core and the server
the other: absolute req/s are low and the ratios are what to read. Goals: signed/unsigned req/s >= 1.0x at
one connection and >= 1.5x at 16; p99 latency is reported next to them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench.bench_server import CASES, ROUNDS, port_of
from bench.loadgen import LoadResult, run_load
from verinfer.processes import free_port, running_http_process, running_server

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16)
GOALS = {1: 1.0, 16: 1.5}
SIGNED, UNSIGNED = "signed /infer", "unsigned FastAPI"


@contextmanager
def unsigned_server() -> Iterator[str]:
    """bench/unsigned_app.py under uvicorn, configured like `verinfer serve`. Yields its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.unsigned_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
        "--no-access-log", "--no-server-header",
    ]  # fmt: skip
    with running_http_process(command, f"http://127.0.0.1:{port}", cwd=REPO) as url:
        yield url


def outputs_of(url: str, body: bytes) -> dict[str, np.ndarray]:
    """The named outputs of one POST /infer (both answer {outputs: [{name, shape, data}]}), as float32.

    Both models' outputs are float32 or small integer labels, exact in float32; the signed server writes
    float32 values in their shortest form, the unsigned one as the float64 they widen to.
    """
    response = httpx.post(f"{url}/infer", content=body, headers={"Content-Type": "application/json"})
    response.raise_for_status()
    return {
        t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        for t in response.json()["outputs"]
    }


def same_work(name: str, signed: dict[str, np.ndarray], unsigned: dict[str, np.ndarray]) -> str:
    """Raise unless both servers computed the same outputs; say whether they agree bit for bit."""
    if signed.keys() != unsigned.keys():
        raise AssertionError(f"{name}: outputs {sorted(signed)} (signed) != {sorted(unsigned)} (unsigned)")
    for key, array in signed.items():
        other = unsigned[key]
        if array.shape != other.shape or not np.allclose(array, other, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{name}: output {key!r} differs: {array.tolist()} != {other.tolist()}")
    exact = all(np.array_equal(signed[k], unsigned[k]) for k in signed)
    return "identical" if exact else "allclose"


def rounds(targets: dict[str, int], body: bytes, total: int, concurrency: int) -> dict[str, list[LoadResult]]:
    """ROUNDS runs of each target, in turn, the order flipped every round (ABBA: drift and warm caches
    favour neither)."""
    runs: dict[str, list[LoadResult]] = {label: [] for label in targets}
    for index in range(ROUNDS):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))
        for label in order:
            runs[label].append(
                run_load("127.0.0.1", targets[label], "/infer", body, total=total, concurrency=concurrency)
            )
    return runs


def median_run(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


def row(label: str, result: LoadResult) -> str:
    return f"  {label:<26} {result.p50:>8.3f} {result.p99:>8.3f} {result.throughput:>9.0f}"


def signed_args(pki: str, serve_args: Sequence[str], llm: bool) -> list[str]:
    args = ["--nsm", "sim", "--pki-dir", pki]
    if not llm:
        args.append("--no-llm")
    for arg in serve_args:
        args.extend(shlex.split(arg))
    return args


def main(total: int, models: Sequence[str], serve_args: Sequence[str], llm: bool) -> int:
    """Print the latency/throughput table and the goals table; exit status 1 if a goal is missed."""
    args_text = " ".join(signed_args("PKI", serve_args, llm)[4:])
    print(
        f"{os.cpu_count()} CPUs (load generator on the same machine); onnxruntime {version('onnxruntime')},"
        f" fastapi {version('fastapi')}, pydantic {version('pydantic')}, uvicorn {version('uvicorn')}"
    )
    print(f"signed: verinfer serve --nsm sim {args_text}".rstrip())
    print(f"{total} requests per run, best of alternating rounds by median throughput (latency in ms)")
    results: dict[str, dict[int, dict[str, LoadResult]]] = {}
    spreads: dict[str, dict[int, tuple[float, float]]] = {}
    with (
        tempfile.TemporaryDirectory() as pki,
        running_server(*signed_args(pki, serve_args, llm)) as signed_url,
        unsigned_server() as unsigned_url,
    ):
        targets = {SIGNED: port_of(signed_url), UNSIGNED: port_of(unsigned_url)}
        print(f"  {'target':<26} {'p50':>8} {'p99':>8} {'req/s':>9}")
        for name in models:
            body = orjson.dumps({"model": name, "inputs": CASES[name][1]})
            agreement = same_work(name, outputs_of(signed_url, body), outputs_of(unsigned_url, body))
            print(f"{name} (body {len(body)} bytes; outputs {agreement})")
            results[name], spreads[name] = {}, {}
            for concurrency in CONCURRENCY:
                runs = rounds(targets, body, total, concurrency)
                results[name][concurrency] = {label: median_run(r) for label, r in runs.items()}
                paired = sorted(
                    s.throughput / u.throughput for s, u in zip(runs[SIGNED], runs[UNSIGNED], strict=True)
                )
                spreads[name][concurrency] = (paired[0], paired[-1])
                for label, result in results[name][concurrency].items():
                    print(row(f"{label}, c={concurrency}", result))

    print(
        "\ngoals: signed / unsigned req/s >= 1.0x at c=1 and >= 1.5x at c=16, ratio of the median runs"
        "\n(rounds: lowest-highest ratio of the paired runs of one round; p99 in ms, signed/unsigned)"
    )
    heads = [f"{f'c={c}':>7} {'goal':>5} {'rounds':>11} {'p99 s/u':>12}" for c in CONCURRENCY]
    print(f"  {'model':<14} {'   '.join(heads)}")
    missed = 0
    for name, by_concurrency in results.items():
        cells = []
        for concurrency in CONCURRENCY:
            signed, unsigned = by_concurrency[concurrency][SIGNED], by_concurrency[concurrency][UNSIGNED]
            ratio = signed.throughput / unsigned.throughput
            met = ratio >= GOALS[concurrency]
            missed += not met
            low, high = spreads[name][concurrency]
            p99s = f"{signed.p99:.2f}/{unsigned.p99:.2f}"
            cells.append(
                f"{ratio:>6.2f}x {'PASS' if met else 'FAIL':>5} {f'{low:.2f}-{high:.2f}':>11} {p99s:>12}"
            )
        print(f"  {name:<14} {'   '.join(cells)}")
    print(f"{'all goals met' if not missed else f'{missed} goal(s) missed'}")
    return 1 if missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="requests per run (default 3000)")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(CASES), default=list(CASES), help="default: all three"
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `verinfer serve` arguments, repeatable, e.g. --serve-arg='--infer-batch-window-ms 0.2'",
    )
    parser.add_argument(
        "--llm", action="store_true", help="let the signed server load the LLM (default --no-llm)"
    )
    options = parser.parse_args()
    sys.exit(main(options.requests, options.models, options.serve_arg, options.llm))
