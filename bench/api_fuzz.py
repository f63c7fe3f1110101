"""Schemathesis over the enclave's whole OpenAPI schema: no answer may be a 5xx.

Run: `.venv/bin/python -m bench.api_fuzz [--max-examples N] [--seed S]` (docs/BENCHMARKS.md has the figures).
It starts a real `verinfer serve --nsm sim` (with a relay token, so /receipts/batch is exercised past its
credential check), runs `st run` over /openapi.json with every check schemathesis has except
`positive_data_acceptance` (a tensor's valid shape and dtype come from each model's manifest entry, which a
static schema cannot express, so schema-valid requests are legitimately refused with 400), and then reads the
server's own `verinfer_requests_total` to count 5xx answers independently of the client.
Exit status 0 only when both schemathesis passed and the server counted no 5xx.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from verinfer.processes import batch_token_args, running_server

TOKEN = "api-fuzz-relay-token"
ST = str(Path(sys.executable).parent / "st")


def status_counts(metrics: str) -> dict[int, float]:
    """Requests the server answered, by status, summed over endpoints."""
    counts: dict[int, float] = {}
    for match in re.finditer(r'^verinfer_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', metrics, re.M):
        status = int(match.group(1))
        counts[status] = counts.get(status, 0.0) + float(match.group(2))
    return counts


def run(max_examples: int, seed: int | None, workers: int = 1) -> int:
    """One worker: with two, hypothesis's lambda-source cache trips over concurrent ast use (a tool error)."""
    with (
        tempfile.TemporaryDirectory() as pki,
        running_server(
            "--nsm", "sim", "--pki-dir", pki, "--access-log", "off", *batch_token_args(TOKEN)
        ) as url,
    ):
        command = [
            ST,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(max_examples),
            "--workers",
            str(workers),
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--no-color",
            "--warnings",
            "off",
        ]
        if seed is not None:
            command += ["--seed", str(seed)]
        hooks = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.api_fuzz_hooks"}  # the OHTTP media types
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=hooks)
        counts = status_counts(httpx.get(f"{url}/metrics").text)
    output = result.stdout + result.stderr
    start = min((output.find(h) for h in ("= FAILURES =", "= ERRORS =") if h in output), default=-1)
    print(output[start:] if start >= 0 else "\n".join(output.splitlines()[-14:]))
    total = sum(counts.values())
    server_errors = sum(v for status, v in counts.items() if status >= 500)
    shown = ", ".join(f"{status}: {int(v)}" for status, v in sorted(counts.items()))
    print(f"server answered {int(total)} requests ({shown})")
    print(f"responses >= 500: {int(server_errors)}; schemathesis exit status {result.returncode}")
    return 0 if server_errors == 0 and result.returncode == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description="schemathesis over the enclave's OpenAPI schema")
    parser.add_argument("--max-examples", type=int, default=400, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    options = parser.parse_args()
    sys.exit(run(options.max_examples, options.seed))


if __name__ == "__main__":
    main()
