"""The chaos run's verdict, from the chain (and the relays' SQLite for open transactions) only.

Four invariants, each a count that must be 0:
- lost: a request made (every nonce in the user's ledger, every InferenceRequested on the canonical chain)
  that is not Fulfilled on chain at the end and has no stated reason (cancelled, expired);
- fulfilled twice: more than one InferenceFulfilled log for one requestId on the canonical chain;
- nonces stuck: a relay account whose pending nonce is not its latest nonce, or that still has
  transactions in anvil's pool, or an open (signed, unconfirmed) transaction row in its SQLite;
- fees to a non-relay: an InferenceFulfilled whose fulfiller is not a relay, or any known account (all
  six anvil keys, the verifier contract, the coinbase) whose ETH balance change is not exactly explained by
  its own transactions' gas and values plus the fees and refunds the contract's events say it paid.
"""

from __future__ import annotations

import sqlite3
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from web3 import Web3
from web3.contract import Contract

from protocol.hashing import keccak256

STATUS_NAMES = {0: "none", 1: "pending", 2: "fulfilled", 3: "cancelled"}
# Statuses of a transaction row that still holds a nonce: the relay's `transactions` table (issue 11), or a
# `requests` row with its own nonce column (the relay before it).
OPEN_TX_STATUSES = ("queued", "signed", "broadcast", "submitted")


def batch_rpc(url: str, calls: list[tuple[str, list[Any]]], chunk: int = 200) -> list[Any]:
    """JSON-RPC batches straight to anvil: scanning thousands of blocks one call at a time is slow."""
    results: list[Any] = []
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(calls), chunk):
            body = [
                {"jsonrpc": "2.0", "id": start + i, "method": m, "params": p}
                for i, (m, p) in enumerate(calls[start : start + chunk])
            ]
            replies = sorted(client.post(url, json=body).json(), key=lambda r: r["id"])
            for reply in replies:
                if "error" in reply:
                    raise RuntimeError(f"RPC error: {reply['error']}")
                results.append(reply["result"])
    return results


@dataclass
class RelayFigures:
    name: str
    address: str
    fulfilments: int = 0
    fees_earned: int = 0
    gas_spent: int = 0
    transactions: int = 0
    reverted: int = 0
    max_gas_price: int = 0
    over_cap: int = 0
    starts: int = 0
    kills: int = 0
    unexpected_exits: int = 0
    revert_reasons: Counter[str] = field(default_factory=Counter)
    sqlite_statuses: dict[str, int] = field(default_factory=dict)  # its own view: request status -> count


@dataclass
class Verdict:
    requests: int = 0
    fulfilled: int = 0
    lost: dict[str, str] = field(default_factory=dict)  # request (or nonce) -> why it counts as lost
    settled_with_reason: dict[str, str] = field(default_factory=dict)
    fulfilled_twice: dict[str, int] = field(default_factory=dict)
    nonces_stuck: list[str] = field(default_factory=list)
    bad_fulfillers: list[str] = field(default_factory=list)
    unexplained: dict[str, int] = field(default_factory=dict)  # address -> wei not explained
    relays: list[RelayFigures] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    blocks_scanned: int = 0

    def failures(self) -> dict[str, int]:
        return {
            "requests lost": len(self.lost),
            "requests fulfilled twice": len(self.fulfilled_twice),
            "nonces stuck": len(self.nonces_stuck),
            "fees paid to a non-relay address": len(self.bad_fulfillers) + len(self.unexplained),
        }

    @property
    def ok(self) -> bool:
        return not any(self.failures().values())

    def details(self) -> list[str]:
        """What each failed invariant found, one line a finding (empty when all hold)."""
        return [
            *(f"lost: {k}: {why}" for k, why in self.lost.items()),
            *(f"fulfilled {n} times: {k}" for k, n in self.fulfilled_twice.items()),
            *(f"nonce stuck: {s}" for s in self.nonces_stuck),
            *(f"fee to a non-relay: {s}" for s in self.bad_fulfillers),
            *(f"unexplained balance change: {a}: {d} wei" for a, d in self.unexplained.items()),
        ]

    def latency(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def median_latency(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


def request_status(contract: Contract, request_id: bytes) -> tuple[int, int]:
    """(status, deadline) of an on-chain request, through whichever getter the contract has."""
    names = {item.get("name") for item in contract.abi}
    if "getRequest" in names:
        request = contract.functions.getRequest(request_id).call()
        return int(request[3]), int(request[1])
    request = contract.functions.requests(request_id).call()
    return int(request[3]), int(request[1])


def open_transactions(db: Path) -> list[str]:
    """Rows of the relay's SQLite that hold a signed transaction not yet settled (schema-tolerant)."""
    if not db.exists():
        return []
    found = []
    with sqlite3.connect(db) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if "status" not in columns or not any("nonce" in c for c in columns):
                continue
            marks = ",".join("?" * len(OPEN_TX_STATUSES))
            query = f"SELECT * FROM {table} WHERE status IN ({marks})"
            for row in conn.execute(query, OPEN_TX_STATUSES):
                found.append(f"{db.name}:{table}:{row[0]!s}")
    return found


def _selector(item: dict[str, Any]) -> str:
    """The 4-byte selector (hex, no 0x) of an ABI error or function."""
    signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
    return keccak256(signature.encode())[:4].hex()


def request_statuses(db: Path) -> dict[str, int]:
    """How a relay's SQLite classes the requests it saw (an observer's view, not an invariant)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, COUNT(*) FROM requests GROUP BY status ORDER BY status"
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


class Checker:
    def __init__(
        self,
        w3: Web3,
        url: str,
        contract: Contract,
        *,
        relays: list[RelayFigures],
        start_block: int,
        start_balances: dict[str, int],
        cap_wei: int,
    ) -> None:
        self.w3 = w3
        self.url = url
        self.contract = contract
        self.relays = relays
        self.start_block = start_block
        self.start_balances = start_balances
        self.cap_wei = cap_wei

    def _logs(self, event: str, end: int) -> list[Any]:
        names = {item.get("name") for item in self.contract.abi if item.get("type") == "event"}
        if event not in names:
            return []
        factory = getattr(self.contract.events, event)()
        return list(factory.get_logs(from_block=self.start_block + 1, to_block=end))

    def verdict(
        self,
        *,
        ledger: dict[int, str],
        dbs: list[Path],
        mined_at: dict[str, float],
    ) -> Verdict:
        end = self.w3.eth.block_number
        verdict = Verdict(relays=self.relays, blocks_scanned=end - self.start_block)
        self._requests(verdict, ledger, end, mined_at)
        self._nonces(verdict, dbs)
        self._balances(verdict, end)
        return verdict

    def _requests(
        self, verdict: Verdict, ledger: dict[int, str], end: int, mined_at: dict[str, float]
    ) -> None:
        requested = self._logs("InferenceRequested", end)
        fulfilled = self._logs("InferenceFulfilled", end)
        verdict.requests = len(requested)
        for nonce, tx_hash in sorted(ledger.items()):
            receipt = self._receipt(tx_hash)
            if receipt is None or receipt["status"] != 1:
                verdict.lost[f"user nonce {nonce}"] = f"request transaction {tx_hash} not mined on the chain"
        count = Counter("0x" + bytes(log["args"]["requestId"]).hex() for log in fulfilled)
        verdict.fulfilled_twice = {rid: n for rid, n in count.items() if n > 1}
        relay_addresses = {r.address.lower(): r for r in self.relays}
        fulfil_time: dict[str, float] = {}
        for log in fulfilled:
            fulfiller = str(log["args"]["fulfiller"]).lower()
            if fulfiller not in relay_addresses:
                verdict.bad_fulfillers.append(
                    f"{'0x' + bytes(log['args']['requestId']).hex()} by {fulfiller}"
                )
            block_hash = "0x" + bytes(log["blockHash"]).hex()
            if block_hash in mined_at:
                fulfil_time.setdefault("0x" + bytes(log["args"]["requestId"]).hex(), mined_at[block_hash])
        head_time = int(self.w3.eth.get_block(end)["timestamp"])
        for log in requested:
            rid = "0x" + bytes(log["args"]["requestId"]).hex()
            status, deadline = request_status(self.contract, bytes(log["args"]["requestId"]))
            if status == 2 and count[rid] >= 1:
                verdict.fulfilled += 1
                requested_at = mined_at.get("0x" + bytes(log["blockHash"]).hex())
                if requested_at is not None and rid in fulfil_time:
                    verdict.latencies.append(fulfil_time[rid] - requested_at)
            elif status == 3:
                verdict.settled_with_reason[rid] = "cancelled by the requester"
            elif status == 1 and deadline < head_time:
                verdict.settled_with_reason[rid] = "expired (deadline passed)"
            else:
                verdict.lost[rid] = f"status {STATUS_NAMES.get(status, status)} at block {end}"

    def _receipt(self, tx_hash: str) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except Exception:
            return None

    def _nonces(self, verdict: Verdict, dbs: list[Path]) -> None:
        pool = self.w3.provider.make_request("txpool_content", [])["result"]  # type: ignore[arg-type]
        in_pool = {
            sender.lower()
            for kind in ("pending", "queued")
            for sender, txs in (pool.get(kind) or {}).items()
            if txs
        }
        for relay in self.relays:
            address = Web3.to_checksum_address(relay.address)
            latest = self.w3.eth.get_transaction_count(address, "latest")
            pending = self.w3.eth.get_transaction_count(address, "pending")
            if latest != pending:
                verdict.nonces_stuck.append(f"{relay.name}: pending nonce {pending} != latest {latest}")
            if relay.address.lower() in in_pool:
                verdict.nonces_stuck.append(f"{relay.name}: transactions left in the pool")
        for db in dbs:
            verdict.nonces_stuck.extend(f"open transaction in {row}" for row in open_transactions(db))

    def _revert_reasons(self, reverted: list[tuple[RelayFigures, str]]) -> None:
        """Why each relay transaction reverted (the contract's custom error), from anvil's call tracer: a
        lost race shows as RequestNotPending, anything else is worth a look."""
        abi: list[dict[str, Any]] = [dict(item) for item in self.contract.abi]
        errors = {_selector(e): str(e["name"]) for e in abi if e.get("type") == "error"}
        calls = [("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}]) for _, tx_hash in reverted]
        for (relay, _), trace in zip(reverted, batch_rpc(self.url, calls), strict=True):
            output = str(trace.get("output") or "0x")
            reason = errors.get(output[2:10]) or trace.get("error") or "unknown"
            relay.revert_reasons[reason] += 1

    def _balances(self, verdict: Verdict, end: int) -> None:
        """Every wei that moved, explained: gas, values, and the fees/refunds the contract's events paid."""
        numbers = list(range(self.start_block + 1, end + 1))
        blocks = batch_rpc(self.url, [("eth_getBlockByNumber", [hex(n), True]) for n in numbers])
        receipts = batch_rpc(self.url, [("eth_getBlockReceipts", [hex(n)]) for n in numbers])
        expected: defaultdict[str, int] = defaultdict(int)
        reverted: list[tuple[RelayFigures, str]] = []
        relay_by_address = {r.address.lower(): r for r in self.relays}
        for block, block_receipts in zip(blocks, receipts, strict=True):
            base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
            coinbase = block["miner"].lower()
            by_hash = {r["transactionHash"]: r for r in block_receipts}
            for tx in block["transactions"]:
                receipt = by_hash[tx["hash"]]
                sender = tx["from"].lower()
                gas = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
                ok = int(receipt["status"], 16) == 1
                value = int(tx["value"], 16) if ok else 0
                expected[sender] -= gas + value
                if tx.get("to"):
                    expected[tx["to"].lower()] += value
                expected[coinbase] += int(receipt["gasUsed"], 16) * (
                    int(receipt["effectiveGasPrice"], 16) - base_fee
                )
                if (relay := relay_by_address.get(sender)) is not None:
                    price = int(receipt["effectiveGasPrice"], 16)
                    relay.transactions += 1
                    relay.gas_spent += gas
                    relay.reverted += 0 if ok else 1
                    if not ok:
                        reverted.append((relay, tx["hash"]))
                    relay.max_gas_price = max(relay.max_gas_price, price)
                    relay.over_cap += 1 if price > self.cap_wei else 0
        self._revert_reasons(reverted)
        fees = {
            "0x" + bytes(log["args"]["requestId"]).hex(): int(log["args"]["fee"])
            for log in self._logs("InferenceRequested", end)
        }
        deferred = Counter(
            (bytes(log["transactionHash"]).hex(), str(log["args"]["to"]).lower())
            for log in self._logs("PaymentDeferred", end)
        )
        contract = self.contract.address.lower()
        for log in self._logs("InferenceFulfilled", end):
            fulfiller = str(log["args"]["fulfiller"]).lower()
            fee = fees.get("0x" + bytes(log["args"]["requestId"]).hex(), 0)
            if (relay := relay_by_address.get(fulfiller)) is not None:
                relay.fulfilments += 1
                relay.fees_earned += fee
            if deferred[(bytes(log["transactionHash"]).hex(), fulfiller)]:
                continue
            expected[contract] -= fee
            expected[fulfiller] += fee
        for log in self._logs("InferenceCancelled", end):
            requester = str(log["args"]["requester"]).lower()
            if deferred[(bytes(log["transactionHash"]).hex(), requester)]:
                continue
            expected[contract] -= int(log["args"]["refund"])
            expected[requester] += int(log["args"]["refund"])
        watched = set(self.start_balances) | set(expected)
        for address in sorted(watched):
            before = self.start_balances.get(address)
            if before is None:
                before = int(self.w3.eth.get_balance(Web3.to_checksum_address(address), self.start_block))
            after = int(self.w3.eth.get_balance(Web3.to_checksum_address(address), end))
            if after - before != expected[address]:
                verdict.unexplained[address] = after - before - expected[address]
