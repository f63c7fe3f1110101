"""The relay chaos run: two competing relays under SIGKILLs, an RPC outage, a deep reorg and a gas spike.

    .venv/bin/python -m bench.chaos --kills 100 --outage-s 30

Everything is real: anvil (pinned, mined by our own Miner so blocks can pause and base fees can jump),
`verinfer serve` enclaves with the simulated NSM, and two `verinfer relay run` processes with different
keys sharing the enclaves, talking to anvil through bench.rpc_proxy. A user account keeps sending paid
requests throughout. The phases run in order: kills, outage, reorg, spike, then a drain until every
request is settled; bench.chaos_check then reads the chain and prints the figures. Exit status 1 when an
invariant fails. docs/RELIABILITY.md has the figures of a full run; tests/test_chaos.py runs a small one.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3

from .chaos_actors import GWEI, Generator, Miner, RelayFleet, RelayProcess, User, relay_argv, rpc
from .chaos_check import Checker, RelayFigures, Verdict, open_transactions, request_status, request_statuses
from .chaos_setup import World, chaos_world

KILL_POINTS = ("random instant", "fulfil in the pool", "fulfil just mined", "both relays at once")


@dataclass
class ChaosConfig:
    kills: int = 100
    requests: int = 400
    rate: float = 1.0  # requests per second while the generator runs
    outage_s: float = 30.0
    reorg_margin: int = 3  # the reorg is at least confirmations + this many blocks deep
    reorg_requests: int = 3
    spike_gwei: float = 80.0
    cap_gwei: float = 10.0
    stuck_after_s: float = 5.0  # the relay re-prices an unmined transaction after this long
    confirmations: int = 2
    block_interval: float = 0.5
    poll: float = 0.2
    fee_wei: int = 10**15
    max_alive_s: float = 4.0  # a random-point kill comes within this long of the relay's start
    seed: int = 1
    phase_timeout_s: float = 120.0
    relay_extra: tuple[str, ...] = ()


@dataclass
class ChaosResult:
    config: ChaosConfig
    verdict: Verdict
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.notes_failing

    @property
    def notes_failing(self) -> list[str]:
        return [note for note in self.notes if note.startswith("FAIL")]


class Run:
    """One chaos run over a World; each phase method adds its figures."""

    def __init__(self, world: World, config: ChaosConfig, say: Callable[[str], None]) -> None:
        self.world = world
        self.config = config
        self.say = say
        self.rng = random.Random(config.seed)
        self.w3 = world.w3
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self.miner = Miner(world.anvil_url, config.block_interval)
        self.user = User(world, config.fee_wei, config.seed)
        self.generator = Generator(self.user, config.rate, config.requests)
        self.fleet = RelayFleet(world, self._argv)
        self.start_block = 0
        self.start_balances: dict[str, int] = {}

    def _argv(self, index: int, db: Path) -> list[str]:
        world = self.world
        argv = relay_argv(
            world,
            db,
            confirmations=self.config.confirmations,
            poll=self.config.poll,
            start_block=self.start_block + 1,
            gas_price_cap_gwei=self.config.cap_gwei,
            stuck_after_s=self.config.stuck_after_s,
            extra=self.config.relay_extra,
        )
        if index % 2:  # the second relay asks the enclaves in the other order
            at = argv.index("--enclave") + 1
            argv[at] = ",".join(reversed(world.enclaves))
        return argv

    # --- progress -------------------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(requests on chain since the start, how many of them are fulfilled)."""
        head = self.w3.eth.block_number
        if head <= self.start_block:
            return 0, 0
        events = self.world.contract.events
        span = {"from_block": self.start_block + 1, "to_block": head}
        asked = {bytes(e["args"]["requestId"]) for e in events.InferenceRequested().get_logs(**span)}
        done = {bytes(e["args"]["requestId"]) for e in events.InferenceFulfilled().get_logs(**span)}
        return len(asked), len(asked & done)

    def caught_up(self) -> bool:
        user = self.user.account.address
        if self.w3.eth.get_transaction_count(user, "pending") != self.w3.eth.get_transaction_count(
            user, "latest"
        ):
            return False
        asked, done = self.progress()
        return asked == len(self.user.ledger) and done == asked

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float | None = None) -> float:
        """Seconds it took; a timeout is a FAIL note (the verdict then says what is missing)."""
        started = time.monotonic()
        deadline = started + (timeout or self.config.phase_timeout_s)
        while not condition():
            if time.monotonic() > deadline:
                asked, done = self.progress()
                self.notes.append(f"FAIL: timed out waiting for {what} ({done}/{asked} fulfilled)")
                self.say(self.notes[-1])
                return time.monotonic() - started
            time.sleep(0.2)
        return time.monotonic() - started

    def pending_nonce_gap(self, relay: RelayProcess) -> bool:
        address = relay.account.address
        return bool(
            self.w3.eth.get_transaction_count(address, "pending")
            > self.w3.eth.get_transaction_count(address, "latest")
        )

    # --- phases ---------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.miner.start()
        with self.miner.paused():
            self.start_block = self.w3.eth.block_number
            coinbase = self.w3.eth.get_block("latest")["miner"]
            watched = [*self.world.known_accounts(), self.world.contract.address, coinbase]
            self.start_balances = {
                a.lower(): int(self.w3.eth.get_balance(Web3.to_checksum_address(a))) for a in watched
            }
        self.fleet.start()
        self.generator.start()
        self.say(
            f"chaos run from block {self.start_block}: "
            f"relays {[r.account.address for r in self.fleet.relays]}"
        )
        warm = self.wait_for(lambda: self.progress()[1] >= 1, "the first fulfilment", timeout=90)
        self.figures["first fulfilment after start (s)"] = round(warm, 1)

    def kills(self) -> None:
        """`config.kills` SIGKILLs, each followed by a restart on the same SQLite file.

        Where a kill lands: at a random instant after the (re)start, while the relay has a fulfil in the pool
        (broadcast, unmined), or just after one of its transactions was mined (before it is confirmed);
        one kill in ten takes the other relay down with it."""
        counts = dict.fromkeys(KILL_POINTS, 0)
        started = time.monotonic()
        done = 0
        while done < self.config.kills:
            relay = self.rng.choice(self.fleet.relays)
            counts[self._kill_point(relay)] += 1
            self.fleet.kill_and_restart(relay)
            done += 1
            if done < self.config.kills and self.rng.random() < 0.1:
                counts["both relays at once"] += 1
                self.fleet.kill_and_restart(next(r for r in self.fleet.relays if r is not relay))
                done += 1
        self.figures["SIGKILLs in the kill phase"] = done
        self.figures["kill points"] = ", ".join(f"{k} {n}" for k, n in counts.items())
        self.figures["kill phase (s)"] = round(time.monotonic() - started, 1)
        self.say(f"kills done: {counts}")

    def _kill_point(self, relay: RelayProcess) -> str:
        """Wait for the moment to kill `relay`; returns which kind of moment it was."""
        address = relay.account.address
        mode = self.rng.choices(KILL_POINTS[:3], weights=(5, 3, 2))[0]
        if mode == KILL_POINTS[0]:
            time.sleep(self.rng.uniform(0.05, self.config.max_alive_s))
            return mode
        if mode == KILL_POINTS[1]:
            met = self._wait_quietly(lambda: self.pending_nonce_gap(relay), 8.0)
        else:
            mined = self.w3.eth.get_transaction_count(address, "latest")
            met = self._wait_quietly(lambda: self.w3.eth.get_transaction_count(address) > mined, 8.0)
        return mode if met else KILL_POINTS[0]

    def _wait_quietly(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def outage(self) -> None:
        proxy = self.world.proxy
        self.say(f"RPC outage for {self.config.outage_s} s")
        began = time.monotonic()
        proxy.go_down()
        time.sleep(self.config.outage_s / 2)
        self.fleet.kill_and_restart(self.fleet.relays[0])  # a relay that starts while its node is down
        self.figures["SIGKILLs during the outage (restart while down)"] = 1
        time.sleep(max(0.0, self.config.outage_s - (time.monotonic() - began)))
        proxy.come_up()
        down = time.monotonic() - began
        self.figures["outage (s)"] = round(down, 1)
        recovered = self.wait_for(self.caught_up, "catching up after the outage")
        self.figures["caught up after the outage (s)"] = round(recovered, 1)
        self.say(f"outage over after {down:.1f} s; caught up {recovered:.1f} s later")

    def reorg(self) -> None:
        config = self.config
        with self.generator.paused():
            self.wait_for(self.caught_up, "quiet chain before the reorg")
            hashes = [self.user.request() for _ in range(config.reorg_requests)]
            nonces = sorted(n for n, sent in self.user.ledger.items() if sent.tx_hash in hashes)
            self.wait_for(lambda: all(self.user.request_id(h) for h in hashes), "reorg requests mined")
            ids = [self.user.request_id(h) for h in hashes]
            first = min(int(self.w3.eth.get_transaction_receipt(h)["blockNumber"]) for h in hashes)  # type: ignore[arg-type]
            self.wait_for(self.caught_up, "fulfilment of the requests to reorg")
            fulfilled_in = [
                int(e["blockNumber"])
                for e in self.world.contract.events.InferenceFulfilled().get_logs(from_block=first)
            ]
            confirmed_at = max(fulfilled_in) + config.confirmations + 2  # the relays have confirmed them
            depth_wanted = config.confirmations + config.reorg_margin
            self.wait_for(
                lambda: self.w3.eth.block_number >= max(confirmed_at, first + depth_wanted - 1),
                "confirmations",
            )
            time.sleep(3 * config.poll)
            with self.miner.paused():
                depth = self.w3.eth.block_number - first + 1
                raws = [
                    self.user.resign(nonce) for nonce in nonces
                ]  # same nonces, new inputs: same request ids
                rpc(self.w3, "anvil_reorg", depth, [["0x" + raw.hex(), 0] for raw in raws])
                self.miner.record_head(depth)
            reopened = [request_status(self.world.contract, bytes.fromhex(i[2:]))[0] for i in ids if i]
        if any(status != 1 for status in reopened):
            self.notes.append(
                f"FAIL: harness: after the reorg the re-created requests are {reopened}, not pending"
            )
        self.figures["reorg depth (blocks)"] = depth
        self.figures["confirmations"] = config.confirmations
        self.figures["requests re-created with new inputs"] = len(raws)
        self.say(
            f"reorg {depth} blocks deep (confirmations {config.confirmations}), "
            f"{len(raws)} requests re-created"
        )
        took = self.wait_for(self.caught_up, "fulfilment after the reorg")
        self.figures["fulfilled again after the reorg (s)"] = round(took, 1)

    def spike(self) -> None:
        config = self.config
        cap = int(config.cap_gwei * GWEI)
        with self.generator.paused():
            self.wait_for(self.caught_up, "quiet chain before the spike")
            with self.miner.paused():
                tx_hash = self.user.request()
                for _ in range(config.confirmations + 1):
                    self.miner.mine()
                self._wait_quietly(lambda: any(self.pending_nonce_gap(r) for r in self.fleet.relays), 30.0)
                time.sleep(1.0)  # let the competing relay join in
                stranded = self._relay_pool()
                spike_block = self.miner.mine(base_fee=int(config.spike_gwei * GWEI))
        request_id = self.user.request_id(tx_hash)
        self.figures["spikes"] = 1
        self.figures["spike base fee (gwei)"] = config.spike_gwei
        self.figures["relay gas price cap (gwei)"] = config.cap_gwei
        self.figures["fulfil transactions stranded"] = len(stranded)
        if not stranded:
            self.notes.append("FAIL: harness: no relay fulfil was in the pool when the spike came")
        self.say(
            f"spike to {config.spike_gwei} gwei at block {spike_block}; "
            f"stranded {len(stranded)} transaction(s)"
        )
        assert request_id is not None
        took = self.wait_for(
            lambda: request_status(self.world.contract, bytes.fromhex(request_id[2:]))[0] == 2,
            "the stranded request's fulfilment",
        )
        logs = self.world.contract.events.InferenceFulfilled().get_logs(
            from_block=spike_block, argument_filters={"requestId": bytes.fromhex(request_id[2:])}
        )
        if logs:
            receipt = self.w3.eth.get_transaction_receipt(logs[0]["transactionHash"])
            block = self.w3.eth.get_block(receipt["blockNumber"])
            price = int(receipt["effectiveGasPrice"])
            self.figures["stranded request fulfilled after (s)"] = round(took, 1)
            self.figures["  blocks after the spike"] = int(receipt["blockNumber"]) - spike_block
            self.figures["  by a replacement transaction"] = (
                "0x" + bytes(receipt["transactionHash"]).hex() not in stranded
            )
            self.figures["  gas price paid / stranded price (gwei)"] = (
                f"{price / GWEI:.2f} / {min(stranded.values(), default=0) / GWEI:.2f}"
            )
            self.figures["  base fee of that block (gwei)"] = round(int(block["baseFeePerGas"]) / GWEI, 2)
            if "0x" + bytes(receipt["transactionHash"]).hex() in stranded:
                self.notes.append(
                    "FAIL: the stranded fulfil was never re-priced: it got in only when the base fee fell "
                    f"back under its original price, {int(receipt['blockNumber']) - spike_block} blocks later"
                )
            if price > cap:
                self.notes.append(
                    f"FAIL: the stranded request was fulfilled at {price} wei, above the cap {cap}"
                )
        self.wait_for(self.caught_up, "fulfilment after the spike")

    def _relay_pool(self) -> dict[str, int]:
        """The relays' transactions in anvil's pool: hash -> gas price."""
        pool = rpc(self.w3, "txpool_content")
        relays = {r.account.address.lower() for r in self.fleet.relays}
        return {
            tx["hash"]: int(tx.get("gasPrice") or tx.get("maxFeePerGas"), 16)
            for kind in ("pending", "queued")
            for sender, by_nonce in (pool.get(kind) or {}).items()
            if sender.lower() in relays
            for tx in by_nonce.values()
        }

    def drain(self) -> None:
        self.generator.stop()
        took = self.wait_for(
            self.caught_up, "every request fulfilled", timeout=max(self.config.phase_timeout_s, 60)
        )
        head = self.w3.eth.block_number
        self.wait_for(
            lambda: self.w3.eth.block_number >= head + self.config.confirmations + 2, "confirmations"
        )
        dbs = [r.db for r in self.fleet.relays]
        self.wait_for(
            lambda: not any(open_transactions(db) for db in dbs), "the relays to settle", timeout=60
        )
        self.figures["drain (s)"] = round(took, 1)

    def finish(self) -> Verdict:
        self.fleet.stop()
        head = self.w3.eth.block_number
        while self.w3.eth.block_number < head + 3:  # anything the relays left valid in the pool gets mined
            time.sleep(0.1)
        self.miner.stop()
        figures = [
            RelayFigures(
                name=r.name,
                address=r.account.address,
                starts=r.starts,
                kills=r.kills,
                unexpected_exits=len(r.unexpected_exits),
                sqlite_statuses=request_statuses(r.db),
            )
            for r in self.fleet.relays
        ]
        checker = Checker(
            self.w3,
            self.world.anvil_url,
            self.world.contract,
            relays=figures,
            start_block=self.start_block,
            start_balances=self.start_balances,
            cap_wei=int(self.config.cap_gwei * GWEI),
        )
        ledger = {nonce: sent.tx_hash for nonce, sent in self.user.ledger.items()}
        verdict = checker.verdict(
            ledger=ledger, dbs=[r.db for r in self.fleet.relays], mined_at=self.miner.mined
        )
        for relay in figures:
            if relay.sqlite_statuses.get("fulfilled", 0) != relay.fulfilments:
                self.notes.append(
                    f"note: relay {relay.name}'s SQLite counts {relay.sqlite_statuses.get('fulfilled', 0)} "
                    f"requests fulfilled by it, the chain {relay.fulfilments}"
                )
            if relay.over_cap:
                self.notes.append(
                    f"FAIL: relay {relay.name} paid above its cap in {relay.over_cap} transaction(s)"
                )
        if self.generator.errors:
            self.notes.append(
                f"user request errors: {len(self.generator.errors)} (first: {self.generator.errors[0]})"
            )
        return verdict


def run_chaos(config: ChaosConfig, workdir: Path, say: Callable[[str], None] = print) -> ChaosResult:
    """Set up a World, run every phase, and return the verdict with its figures."""
    started = time.monotonic()
    with chaos_world(workdir) as world:
        run = Run(world, config, say)
        try:
            run.begin()
            if config.kills:
                run.kills()
            if config.outage_s > 0:
                run.outage()
            run.reorg()
            run.spike()
            run.drain()
        finally:
            verdict = run.finish()
    run.figures["wall time (s)"] = round(time.monotonic() - started, 1)
    return ChaosResult(config, verdict, run.figures, run.notes)


def _eth(wei: int) -> str:
    return f"{Web3.from_wei(wei, 'ether'):.6f}"


def report(result: ChaosResult) -> str:
    """The figures table (markdown), then the invariants."""
    v = result.verdict
    rows: list[tuple[str, object]] = [
        ("requests made (on chain)", v.requests),
        ("requests fulfilled", v.fulfilled),
        ("settled otherwise (with reason)", len(v.settled_with_reason)),
        *result.figures.items(),
        ("blocks", v.blocks_scanned),
        ("request -> fulfil latency p50 / p95 (s)", f"{v.latency(0.5):.2f} / {v.latency(0.95):.2f}"),
    ]
    for relay in v.relays:
        rows += [
            (f"relay {relay.name} fulfilments", relay.fulfilments),
            (
                f"relay {relay.name} starts / SIGKILLs / exits on its own",
                f"{relay.starts} / {relay.kills} / {relay.unexpected_exits}",
            ),
            (
                f"relay {relay.name} transactions mined / reverted",
                f"{relay.transactions} / {relay.reverted}"
                + (
                    f" ({', '.join(f'{k} {n}' for k, n in relay.revert_reasons.items())})"
                    if relay.reverted
                    else ""
                ),
            ),
            (
                f"relay {relay.name} fees earned / gas spent (ETH)",
                f"{_eth(relay.fees_earned)} / {_eth(relay.gas_spent)}",
            ),
            (f"relay {relay.name} highest gas price paid (gwei)", f"{relay.max_gas_price / GWEI:.2f}"),
            (
                f"relay {relay.name} SQLite request statuses",
                ", ".join(f"{k} {n}" for k, n in relay.sqlite_statuses.items()),
            ),
        ]
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {val} |" for k, val in rows)]
    lines += ["", "| invariant | count |", "|---|---|", *(f"| {k} | {n} |" for k, n in v.failures().items())]
    details = [
        *v.details(),
        *(f"settled: {k}: {why}" for k, why in v.settled_with_reason.items()),
        *result.notes,
    ]
    if details:
        lines += ["", *details]
    lines += ["", "PASS: all invariants hold" if result.ok else "FAIL"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="at most this many requests")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    parser.add_argument("--outage-s", type=float, default=defaults.outage_s)
    parser.add_argument("--reorg-margin", type=int, default=defaults.reorg_margin)
    parser.add_argument("--spike-gwei", type=float, default=defaults.spike_gwei)
    parser.add_argument("--cap-gwei", type=float, default=defaults.cap_gwei)
    parser.add_argument("--stuck-after", type=float, default=defaults.stuck_after_s)
    parser.add_argument("--confirmations", type=int, default=defaults.confirmations)
    parser.add_argument("--block-interval", type=float, default=defaults.block_interval)
    parser.add_argument("--poll", type=float, default=defaults.poll)
    parser.add_argument("--fee-wei", type=int, default=defaults.fee_wei)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--phase-timeout", type=float, default=defaults.phase_timeout_s)
    parser.add_argument("--workdir", type=Path, help="keep logs and SQLite files here (default: a temp dir)")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        kills=args.kills,
        requests=args.requests,
        rate=args.rate,
        outage_s=args.outage_s,
        reorg_margin=args.reorg_margin,
        spike_gwei=args.spike_gwei,
        cap_gwei=args.cap_gwei,
        stuck_after_s=args.stuck_after,
        confirmations=args.confirmations,
        block_interval=args.block_interval,
        poll=args.poll,
        fee_wei=args.fee_wei,
        seed=args.seed,
        phase_timeout_s=args.phase_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="verinfer-chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run_chaos(
            config, workdir, lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
        )
        print(report(result))
        if not result.ok:
            print(
                f"relay logs: {workdir}/relay-*.log" + ("" if args.workdir else " (deleted; pass --workdir)")
            )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
