"""CPU instructions per signed /infer, now vs the baseline commit, counted by valgrind (callgrind).

Run: `.venv/bin/python -m bench.bench_instructions [--baseline-ref REF] [--requests N]` (needs Debian's
valgrind). Wall-clock throughput on a shared 2-vCPU machine moves by +-10% between runs; instruction counts
do not, so this is the figure that shows what a change costs per request. Each tree runs
bench/request_loop.py in process (no HTTP: uvicorn's share is the same for both) twice, with 200 and
200 + N requests, and the difference is divided by N, so start-up cancels out. OpenBLAS threads are pinned
to one and hash randomisation off, which makes the count repeatable to about 1%.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_server import BASELINE_REF, REPO

LOOP = REPO / "bench" / "request_loop.py"


def instructions(tree: Path, model: str, count: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out"]
        result = subprocess.run(
            [*valgrind, sys.executable, str(LOOP), model, str(count)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def per_request(tree: Path, model: str, requests: int) -> float:
    return (instructions(tree, model, 200 + requests) - instructions(tree, model, 200)) / requests


def main(baseline_ref: str, requests: int) -> None:
    with tempfile.TemporaryDirectory() as baseline:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", baseline_ref], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", baseline], input=archive.stdout, check=True)
        print(f"instructions per signed /infer, in process ({requests} requests, valgrind callgrind)")
        print(f"  {'model':<10} {baseline_ref:>12} {'now':>12} {'now / before':>13}")
        for model in ("iris-ols", "iris-mlp"):
            before = per_request(Path(baseline), model, requests)
            now = per_request(REPO, model, requests)
            print(f"  {model:<10} {before:>12,.0f} {now:>12,.0f} {now / before:>12.3f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="instructions per signed /infer, now vs a baseline commit")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--requests", type=int, default=2000)
    options = parser.parse_args()
    main(options.baseline_ref, options.requests)
