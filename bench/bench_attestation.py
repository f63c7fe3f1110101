"""Attestation benchmarks: verification time per real hardware document, and simulator attestation time.

Run: `make bench` (or `.venv/bin/python bench/bench_attestation.py`). Goal: verification <= 5 ms/document.
"Cold" clears the certificate caches before every run (a verifier seeing a region for the first time);
"warm" keeps them (intermediates repeat across documents, so only the leaf link and COSE signature are new).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from attestation import Policy, decode, verify
from attestation.chain import _parse, _signed_by
from attestation.nsm import NsmClient
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "attestation" / "valid"
GOAL_MS = 5.0


def timed(fn: Callable[[], object], runs: int, before: Callable[[], None] | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def clear_caches() -> None:
    _parse.cache_clear()
    _signed_by.cache_clear()


def main(runs: int = 50) -> None:
    policy = Policy(allow_debug=True)
    print(f"{'document':<52} {'decode ms':>9} {'cold ms':>8} {'warm ms':>8}")
    colds, warms = [], []
    for path in sorted(SAMPLES.iterdir()):
        data = path.read_bytes()
        at = datetime.fromtimestamp(decode(data).document.timestamp_ms / 1000, UTC)
        decode_ms = statistics.median(timed(partial(decode, data), runs))
        check = partial(verify, data, policy, at)
        cold = statistics.median(timed(check, runs, clear_caches))
        warm = statistics.median(timed(check, runs))
        colds.append(cold)
        warms.append(warm)
        print(f"{path.name:<52} {decode_ms:>9.3f} {cold:>8.3f} {warm:>8.3f}")
    worst = max(colds)
    print(
        f"\nverification, median over documents: cold {statistics.median(colds):.3f} ms, "
        f"warm {statistics.median(warms):.3f} ms; worst cold {worst:.3f} ms "
        f"= {worst / GOAL_MS:.2f}x of the {GOAL_MS:.0f} ms goal ({'PASS' if worst <= GOAL_MS else 'FAIL'})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        pki = SimulatorPki(tmp)
        nsm = NsmClient(SimulatedNsmDevice(pki, {0: b"\x01" * 48}), simulated=True)
        nsm.attestation()  # issue the leaf once, as a booted enclave has
        sim = timed(lambda: nsm.attestation(public_key=b"k" * 64, nonce=b"n" * 32), runs)
        document = nsm.attestation(public_key=b"k" * 64)
        sim_policy = Policy(root=pki.root)
        sim_verify = timed(lambda: verify(document, sim_policy), runs)
    print(
        f"simulator attestation (NSM request -> signed document): median {statistics.median(sim):.3f} ms, "
        f"p99 {sorted(sim)[int(len(sim) * 0.99) - 1]:.3f} ms"
    )
    print(f"verification of a simulated document (warm): median {statistics.median(sim_verify):.3f} ms")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
