"""Relay throughput and latency: 1 worker on SQLite, 1 and 3 workers on PostgreSQL, one setup for all.

    .venv/bin/python -m bench.bench_relay --requests 60

One anvil (bench.chaos_actors.Miner mines a block every --block-interval seconds), the InferenceVerifier,
two `verinfer serve --nsm sim` enclaves and a throwaway PostgreSQL server (bench/pg_server.py), set up once.
For each configuration, fresh relay state (a new SQLite file or PostgreSQL database), the workers
(`verinfer relay run` processes, their own keys) are started and left to settle, then a test account sends
a burst of N paid requests (iris-mlp and mnist-lenet inputs) as fast as it can sign them, and the run waits
until each request's InferenceFulfilled (the callback runs in the same transaction) is on chain. Printed per
configuration: fulfilled requests per second (N over the time from the first request sent to the block of
the last fulfilment) and request-to-callback latency p50 / p95 (from the request being sent to the block
that holds its fulfilment being mined).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from eth_account import Account

from verinfer.processes import ANVIL_KEYS, free_port

from .chaos_actors import Miner, RelayProcess, User, relay_argv
from .chaos_setup import SPARE, World, chaos_world
from .pg_server import PostgresServer, running_postgres

CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 3))


@dataclass
class Figures:
    backend: str
    workers: int
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def measure(
    world: World,
    pg: PostgresServer,
    miner: Miner,
    user: User,
    *,
    backend: str,
    workers: int,
    requests: int,
    poll: float,
    timeout: float,
    say: Callable[[str], None],
) -> Figures:
    w3 = world.w3
    db = (
        str(world.workdir / f"bench-{time.time_ns()}.sqlite3")
        if backend == "sqlite"
        else pg.url(pg.create_database())
    )
    start = w3.eth.block_number
    accounts = [*world.relay_accounts, Account.from_key(ANVIL_KEYS[SPARE])][:workers]
    processes = []
    for index, account in enumerate(accounts):
        port = free_port()
        argv = relay_argv(
            world,
            Path("-"),
            confirmations=1,
            poll=poll,
            start_block=start + 1,
            gas_price_cap_gwei=100.0,
            stuck_after_s=30.0,
            extra=("--metrics-port", str(port)),
        )
        argv[argv.index("--db") + 1] = db
        if index % 2:
            argv[argv.index("--enclave") + 1] = ",".join(reversed(world.enclaves))
        env = {**os.environ, "VERINFER_KEY": "0x" + bytes(account.key).hex()}
        env.pop("VERINFER_RELAY_DB", None)
        log = world.workdir / f"bench-{backend}-{workers}.log"
        process = RelayProcess(f"{backend}-{workers}-{index}", account, Path(db), log, argv, env)
        process.start()
        processes.append((process, port))
    try:
        deadline = time.monotonic() + 60
        while not all(_ready(port) for _, port in processes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {backend} workers did not start: see {world.workdir}")
            time.sleep(0.2)
        time.sleep(2.0)  # a step or two: leader elected, scanning caught up
        sent: dict[str, float] = {}
        for _ in range(requests):
            sent[user.request()] = time.time()
        first = min(sent.values())
        ids: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(ids) < len(sent):
            for tx_hash in sent:
                if tx_hash not in ids and (request_id := user.request_id(tx_hash)) is not None:
                    ids[tx_hash] = request_id
            if time.monotonic() > deadline:
                raise RuntimeError("the burst's requests were not all mined")
            time.sleep(0.2)
        wanted = {bytes.fromhex(i[2:]): h for h, i in ids.items()}
        done: dict[bytes, float] = {}
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(done)}/{len(wanted)} fulfilled in {timeout} s ({backend}, {workers})"
                )
            for log in world.contract.events.InferenceFulfilled().get_logs(from_block=start + 1):
                fulfilled = bytes(log["args"]["requestId"])
                mined = miner.mined.get("0x" + bytes(log["blockHash"]).hex())
                if fulfilled in wanted and fulfilled not in done and mined is not None:
                    done[fulfilled] = mined
            time.sleep(0.2)
        latencies = [done[i] - sent[h] for i, h in wanted.items()]
        figures = Figures(backend, workers, requests, max(done.values()) - first, latencies)
        say(
            f"{backend}, {workers} worker(s): {figures.per_second:.2f} fulfilled/s, latency p50 "
            f"{figures.quantile(0.5):.2f} s, p95 {figures.quantile(0.95):.2f} s"
        )
        return figures
    finally:
        for process, _ in processes:
            process.stop()


def run_bench(
    workdir: Path,
    *,
    requests: int,
    block_interval: float,
    poll: float,
    timeout: float,
    say: Callable[[str], None] = print,
) -> list[Figures]:
    results = []
    with running_postgres() as pg, chaos_world(workdir) as world:
        miner = Miner(world.anvil_url, block_interval).start()
        user = User(world, 10**15, seed=1)
        try:
            for backend, workers in CONFIGS:
                results.append(
                    measure(
                        world,
                        pg,
                        miner,
                        user,
                        backend=backend,
                        workers=workers,
                        requests=requests,
                        poll=poll,
                        timeout=timeout,
                        say=say,
                    )
                )
        finally:
            miner.stop()
    return results


def table(results: list[Figures]) -> str:
    lines = [
        "| state | workers | requests | fulfilled / s | latency p50 (s) | latency p95 (s) | mean (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results:
        lines.append(
            f"| {f.backend} | {f.workers} | {f.requests} | {f.per_second:.2f} | {f.quantile(0.5):.2f} | "
            f"{f.quantile(0.95):.2f} | {statistics.mean(f.latencies):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="requests in each burst")
    parser.add_argument("--block-interval", type=float, default=0.25, help="seconds between blocks")
    parser.add_argument("--poll", type=float, default=0.1, help="the workers' --poll")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each burst to be served")
    parser.add_argument("--workdir", type=Path, help="keep the workers' logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="verinfer-bench-relay-") as tmp:
        results = run_bench(
            args.workdir or Path(tmp),
            requests=args.requests,
            block_interval=args.block_interval,
            poll=args.poll,
            timeout=args.timeout,
            say=lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True),
        )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
