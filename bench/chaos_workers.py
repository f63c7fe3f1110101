"""The relay workers' chaos run: 3 `verinfer relay run` workers on one PostgreSQL database under SIGKILLs.

    .venv/bin/python -m bench.chaos_workers --requests 200 --kills 60 --seed 1

Real processes: anvil (mined by bench.chaos_actors.Miner), two `verinfer serve` enclaves (simulated NSM,
receipt batches served to the relays' token), a throwaway PostgreSQL server (bench/pg_server.py) holding
one database for every worker, and three workers with their own keys, `--lease 3 --anchor-min 8`. A user
sends paid requests throughout. Every 0.5-3 s a worker is SIGKILLed (every fourth kill the leader, found
from the workers' /metrics), and restarted after 0-4 s, so that its leases run out and the others take its
requests over (including a fulfil it had broadcast but not yet seen mined). Then every worker comes back
and the run drains until each request is fulfilled and every transaction settled.

The verdict, read off the chain and the database: no request lost, none fulfilled twice, no relay
transaction reverted (a worker racing another on chain would revert with RequestNotPending or
AlreadyAnchored), no nonce stuck or transaction left open, no fee astray (bench.chaos_check), and every
receipt batch recorded anchored on chain exactly once, the batches of each enclave covering disjoint ranges
of its receipts. Exit status 1 when anything fails. tests/test_relay_workers.py runs a small one.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from web3 import Web3

from verinfer.processes import ANVIL_KEYS, batch_token_args, free_port

from .chaos_actors import Generator, Miner, RelayProcess, User, relay_argv
from .chaos_check import Checker, RelayFigures, Verdict
from .chaos_setup import SPARE, World, chaos_world
from .pg_server import PostgresServer, running_postgres

TOKEN = "chaos-workers-batch-token"
OPEN = ("queued", "signed", "broadcast")


@dataclass
class WorkersConfig:
    workers: int = 3
    requests: int = 200
    kills: int = 60
    rate: float = 2.0  # requests per second
    min_gap_s: float = 0.5  # between kills
    max_gap_s: float = 3.0
    max_down_s: float = 4.0  # a killed worker is restarted after 0 to this many seconds
    leader_every: int = 4  # every n-th kill is the leader's
    lease_s: float = 3.0
    confirmations: int = 2
    block_interval: float = 0.5
    poll: float = 0.2
    fee_wei: int = 10**15
    anchor_min: int = 8
    anchor_max: int = 64
    cap_gwei: float = 10.0
    stuck_after_s: float = 5.0
    drain_timeout_s: float = 180.0
    seed: int = 1


@dataclass
class WorkersResult:
    config: WorkersConfig
    verdict: Verdict
    figures: dict[str, Any] = field(default_factory=dict)
    open_transactions: list[str] = field(default_factory=list)
    batch_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> dict[str, int]:
        found = self.verdict.failures()
        return {
            "requests lost": found["requests lost"],
            "requests fulfilled twice": found["requests fulfilled twice"],
            "relay transactions reverted": sum(r.reverted for r in self.verdict.relays),
            "nonces stuck": found["nonces stuck"] + len(self.open_transactions),
            "fees paid to a non-relay address": found["fees paid to a non-relay address"],
            "receipt batches not anchored exactly once": len(self.batch_problems),
        }

    @property
    def ok(self) -> bool:
        return not any(self.failures().values()) and not any(n.startswith("FAIL") for n in self.notes)


@dataclass
class Worker:
    process: RelayProcess
    metrics_port: int
    restart_at: float | None = None  # down until then (None: running)

    def scrape(self) -> dict[str, float]:
        """This worker's /metrics, name -> value (empty when it does not answer)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1.0).text
        except httpx.HTTPError:
            return {}
        values = {}
        for line in text.splitlines():
            if line.startswith("verinfer_relay_") and " " in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


def pg_rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(statement).fetchall())


class WorkersRun:
    def __init__(
        self, world: World, pg: PostgresServer, config: WorkersConfig, say: Callable[[str], None]
    ) -> None:
        self.world = world
        self.config = config
        self.say = say
        self.rng = random.Random(config.seed)
        self.w3 = world.w3
        self.db = pg.url(pg.create_database())
        self.miner = Miner(world.anvil_url, config.block_interval)
        self.user = User(world, config.fee_wei, config.seed)
        self.generator = Generator(self.user, config.rate, config.requests)
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self.workers: list[Worker] = []
        self.start_block = 0
        self.start_balances: dict[str, int] = {}
        self.max_lag = 0.0

    # --- workers ---------------------------------------------------------------------------------------

    def _make_workers(self) -> None:
        accounts = [*self.world.relay_accounts, Account.from_key(ANVIL_KEYS[SPARE])]
        if self.config.workers > len(accounts):
            raise ValueError(f"at most {len(accounts)} workers (one anvil key each)")
        c = self.config
        for index, account in enumerate(accounts[: c.workers]):
            port = free_port()
            argv = relay_argv(
                self.world,
                Path("-"),
                confirmations=c.confirmations,
                poll=c.poll,
                start_block=self.start_block + 1,
                gas_price_cap_gwei=c.cap_gwei,
                stuck_after_s=c.stuck_after_s,
                extra=(
                    "--lease", str(c.lease_s), "--metrics-port", str(port),
                    "--anchor-min", str(c.anchor_min), "--anchor-max", str(c.anchor_max),
                    "--batch-token-env", "RELAY_BATCH_TOKEN",
                ),
            )  # fmt: skip
            argv[argv.index("--db") + 1] = self.db
            if index % 2:  # ask the enclaves in the other order
                at = argv.index("--enclave") + 1
                argv[at] = ",".join(reversed(self.world.enclaves))
            name = "abc"[index] if index < 3 else str(index)
            env = {
                **os.environ,
                "VERINFER_KEY": "0x" + bytes(account.key).hex(),
                "RELAY_BATCH_TOKEN": TOKEN,
            }
            env.pop("VERINFER_RELAY_DB", None)
            process = RelayProcess(
                name=name,
                account=account,
                db=self.world.workdir / "postgresql",
                log=self.world.workdir / f"worker-{name}.log",
                argv=argv,
                env=env,
            )
            self.workers.append(Worker(process, port))

    def leader(self) -> Worker | None:
        for worker in self.workers:
            if worker.restart_at is None and worker.scrape().get("verinfer_relay_leader") == 1.0:
                return worker
        return None

    def _restart_due(self, everyone: bool = False) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and (everyone or worker.restart_at <= now):
                worker.process.start()
                worker.restart_at = None

    def _supervise(self) -> None:
        """A worker that exited on its own is counted and restarted."""
        for worker in self.workers:
            process = worker.process.process
            if worker.restart_at is None and process is not None and (code := process.poll()) is not None:
                worker.process.unexpected_exits.append(code)
                worker.process.start()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._restart_due()
            self._supervise()
            time.sleep(min(0.1, left))

    # --- phases ----------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.miner.start()
        with self.miner.paused():
            self.start_block = self.w3.eth.block_number
            coinbase = self.w3.eth.get_block("latest")["miner"]
            watched = [*self.world.known_accounts(), self.world.contract.address, coinbase]
            self.start_balances = {
                a.lower(): int(self.w3.eth.get_balance(Web3.to_checksum_address(a))) for a in watched
            }
        self._make_workers()
        for worker in self.workers:
            worker.process.start()
        self.generator.start()
        self.say(
            f"{len(self.workers)} workers on {self.db.rsplit('/', 1)[-1]} from block {self.start_block}: "
            f"{[w.process.account.address for w in self.workers]}"
        )

    def _in_pool(self, worker: Worker) -> bool:
        """The worker has a transaction broadcast and not yet mined (its pending nonce is ahead)."""
        address = worker.process.account.address
        return bool(
            self.w3.eth.get_transaction_count(address, "pending") > self.w3.eth.get_transaction_count(address)
        )

    def kills(self) -> None:
        """Every 0.5-3 s a SIGKILL: every leader_every-th the leader's, else a random running worker's; half
        of them the moment the worker has a fulfil broadcast and unmined (if that comes within the gap)."""
        c = self.config
        kills = leader_kills = in_pool = 0
        started = time.monotonic()
        while kills < c.kills:
            gap = self.rng.uniform(c.min_gap_s, c.max_gap_s)
            self._sleep(c.min_gap_s)
            running = [w for w in self.workers if w.restart_at is None]
            for worker in running:
                self.max_lag = max(self.max_lag, worker.scrape().get("verinfer_relay_lag_blocks", 0.0))
            if len(running) < 2:
                self._sleep(gap - c.min_gap_s)
                continue  # never all of them down at once
            victim = self.leader() if kills % c.leader_every == 0 else None
            leader_kill = victim is not None
            victim = victim or self.rng.choice(running)
            deadline = time.monotonic() + gap - c.min_gap_s
            if self.rng.random() < 0.5:
                while time.monotonic() < deadline and not self._in_pool(victim):
                    time.sleep(0.02)
            else:
                self._sleep(deadline - time.monotonic())
            in_pool += self._in_pool(victim)
            victim.process.kill()
            victim.restart_at = time.monotonic() + self.rng.uniform(0, c.max_down_s)
            kills += 1
            leader_kills += leader_kill
        self.figures["SIGKILLs"] = kills
        self.figures["leader SIGKILLs"] = leader_kills
        self.figures["SIGKILLs with a transaction of the worker in the pool"] = in_pool
        self.figures["kill phase (s)"] = round(time.monotonic() - started, 1)
        self.say(
            f"kills done: {kills} ({leader_kills} of the leader, {in_pool} with a transaction in the pool)"
        )

    def progress(self) -> tuple[int, int]:
        head = self.w3.eth.block_number
        events = self.world.contract.events
        span = {"from_block": self.start_block + 1, "to_block": head}
        asked = {bytes(e["args"]["requestId"]) for e in events.InferenceRequested().get_logs(**span)}
        done = {bytes(e["args"]["requestId"]) for e in events.InferenceFulfilled().get_logs(**span)}
        return len(asked), len(asked & done)

    def _settled(self) -> bool:
        user = self.user.account.address
        if self.w3.eth.get_transaction_count(user, "pending") != self.w3.eth.get_transaction_count(user):
            return False
        asked, done = self.progress()
        if asked != len(self.user.ledger) or done != asked:
            return False
        open_requests = pg_rows(
            self.db, "SELECT COUNT(*) FROM requests WHERE status IN ('pending', 'submitted')"
        )[0][0]
        open_txs = pg_rows(self.db, f"SELECT COUNT(*) FROM transactions WHERE status IN {OPEN}")[0][0]
        open_batches = pg_rows(self.db, "SELECT COUNT(*) FROM batches WHERE status = 'submitted'")[0][0]
        return bool(open_requests == open_txs == open_batches == 0)

    def drain(self) -> None:
        while len(self.user.ledger) < self.config.requests and not self.generator.errors:
            self._sleep(0.5)
        self.generator.stop()
        self._restart_due(everyone=True)
        started = time.monotonic()
        while not self._settled():
            if time.monotonic() - started > self.config.drain_timeout_s:
                asked, done = self.progress()
                self.notes.append(f"FAIL: timed out draining ({done}/{asked} fulfilled)")
                break
            self._sleep(0.5)
        self.figures["drain (s)"] = round(time.monotonic() - started, 1)

    def finish(self) -> WorkersResult:
        for worker in self.workers:
            worker.process.stop()
        head = self.w3.eth.block_number
        while self.w3.eth.block_number < head + 3:
            time.sleep(0.1)
        self.miner.stop()
        relays = [
            RelayFigures(
                name=w.process.name,
                address=w.process.account.address,
                starts=w.process.starts,
                kills=w.process.kills,
                unexpected_exits=len(w.process.unexpected_exits),
            )
            for w in self.workers
        ]
        checker = Checker(
            self.w3,
            self.world.anvil_url,
            self.world.contract,
            relays=relays,
            start_block=self.start_block,
            start_balances=self.start_balances,
            cap_wei=int(self.config.cap_gwei * 10**9),
        )
        ledger = {nonce: sent.tx_hash for nonce, sent in self.user.ledger.items()}
        verdict = checker.verdict(ledger=ledger, dbs=[], mined_at=self.miner.mined)
        result = WorkersResult(self.config, verdict, self.figures, notes=self.notes)
        result.open_transactions = [
            f"transaction {i} of {sender} ({kind} {ref}) is still {status}"
            for i, sender, kind, ref, status in pg_rows(
                self.db, f"SELECT id, sender, kind, ref, status FROM transactions WHERE status IN {OPEN}"
            )
        ]
        self._batches(result)
        self._logs(result)
        for relay in relays:
            if relay.over_cap:
                self.notes.append(f"FAIL: worker {relay.name} paid above its cap {relay.over_cap} times")
        if self.generator.errors:
            self.notes.append(
                f"user request errors: {len(self.generator.errors)}: {self.generator.errors[0]}"
            )
        return result

    def _batches(self, result: WorkersResult) -> None:
        """Every batch recorded is anchored, once, on chain; no root on chain the fleet did not record; the
        batches of one enclave cover disjoint receipt ranges."""
        recorded = pg_rows(self.db, "SELECT root, enclave, first, count, status FROM batches ORDER BY first")
        anchored = Counter(
            "0x" + bytes(e["args"]["root"]).hex()
            for e in self.world.contract.events.BatchAnchored().get_logs(from_block=self.start_block + 1)
        )
        problems = result.batch_problems
        for root, _, _, _, status in recorded:
            if status != "anchored":
                problems.append(f"batch {root}: {status} in the database")
            if anchored[root] != 1:
                problems.append(f"batch {root}: anchored {anchored[root]} times on chain")
        problems += [
            f"root {r} anchored on chain, not recorded" for r in anchored if r not in {b[0] for b in recorded}
        ]
        ends: dict[str, int] = {}
        for root, enclave, first, count, _ in recorded:
            if first < ends.get(enclave, 0):
                problems.append(
                    f"batch {root} of {enclave} starts at receipt {first}, inside the batch before"
                )
            ends[enclave] = first + count
        self.figures["receipt batches anchored (receipts)"] = (
            f"{sum(anchored.values())} ({sum(b[3] for b in recorded)})"
        )

    def _logs(self, result: WorkersResult) -> None:
        """Counts from the workers' logs (their /metrics restart at zero with each process)."""
        patterns = {
            "lease take-overs": r"taken over from worker",
            "leadership changes": r"is the leader now",
            "others' transactions found dead": r"is dead: nonce|was never signed: dropped",
            "requests closed on another worker's transaction": r"fulfilled by worker 0x\w+ in 0x",
            "fulfilments not sent (claim lost)": r"another worker holds it now; sending nothing",
        }
        totals = Counter[str]()
        for worker in self.workers:
            text = worker.process.log.read_text(errors="replace") if worker.process.log.exists() else ""
            for name, pattern in patterns.items():
                totals[name] += len(re.findall(pattern, text))
        for name in patterns:
            self.figures[name] = totals[name]
        self.figures["largest lag behind the head seen (blocks)"] = int(self.max_lag)


def run_workers_chaos(
    config: WorkersConfig, workdir: Path, say: Callable[[str], None] = print
) -> WorkersResult:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    with running_postgres() as pg, chaos_world(workdir, enclave_args=tuple(batch_token_args(TOKEN))) as world:
        run = WorkersRun(world, pg, config, say)
        try:
            run.begin()
            run.kills()
            run.drain()
        finally:
            result = run.finish()
    result.figures["wall time (s)"] = round(time.monotonic() - started, 1)
    return result


def report(result: WorkersResult) -> str:
    v = result.verdict
    rows: list[tuple[str, object]] = [
        ("workers", result.config.workers),
        ("requests made (on chain)", v.requests),
        ("requests fulfilled", v.fulfilled),
        *result.figures.items(),
        ("blocks", v.blocks_scanned),
        ("request -> fulfil latency p50 / p95 (s)", f"{v.latency(0.5):.2f} / {v.latency(0.95):.2f}"),
    ]
    for relay in v.relays:
        rows += [
            (f"worker {relay.name} fulfilments", relay.fulfilments),
            (
                f"worker {relay.name} starts / SIGKILLs / exits on its own",
                f"{relay.starts} / {relay.kills} / {relay.unexpected_exits}",
            ),
            (
                f"worker {relay.name} transactions mined / reverted",
                f"{relay.transactions} / {relay.reverted}"
                + (
                    f" ({', '.join(f'{k} {n}' for k, n in relay.revert_reasons.items())})"
                    if relay.reverted
                    else ""
                ),
            ),
        ]
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {val} |" for k, val in rows)]
    lines += [
        "",
        "| invariant | count |",
        "|---|---|",
        *(f"| {k} | {n} |" for k, n in result.failures().items()),
    ]
    details = [*v.details(), *result.open_transactions, *result.batch_problems, *result.notes]
    if details:
        lines += ["", *details]
    lines += ["", "PASS: all invariants hold" if result.ok else "FAIL"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = WorkersConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--requests", type=int, default=d.requests)
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--rate", type=float, default=d.rate, help="requests per second")
    parser.add_argument("--lease", type=float, default=d.lease_s)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workdir", type=Path, help="keep the workers' logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    config = WorkersConfig(
        workers=args.workers,
        requests=args.requests,
        kills=args.kills,
        rate=args.rate,
        lease_s=args.lease,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="verinfer-workers-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run_workers_chaos(
            config, workdir, lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
        )
        print(report(result))
        if not result.ok:
            print(
                f"worker logs: {workdir}/worker-*.log"
                + ("" if args.workdir else " (deleted; pass --workdir)")
            )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
