"""The relay's durable state in SQLite: scan checkpoints, every request's status, every transaction it sends.

Each change is one committed SQLite transaction (WAL, synchronous=FULL), so a relay killed at any instant
restarts from a consistent state: nothing seen is lost, and a transaction recorded as signed is re-broadcast
as the very same bytes rather than signed again. All of the relay's SQL is in this module.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .errors import StateError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    block_number INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    input BLOB NOT NULL,
    input_hash TEXT NOT NULL,
    deadline INTEGER NOT NULL,
    callback_gas INTEGER NOT NULL,
    fee TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    detail TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, next_attempt);
CREATE TABLE IF NOT EXISTS checkpoints (
    block INTEGER PRIMARY KEY, hash TEXT NOT NULL, recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    root TEXT PRIMARY KEY,
    enclave TEXT NOT NULL,
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    signature TEXT NOT NULL,
    receipts TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    guard TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    status TEXT NOT NULL,
    to_address TEXT NOT NULL,
    data BLOB NOT NULL,
    value TEXT NOT NULL,
    gas INTEGER NOT NULL,
    max_price INTEGER,
    confirmed_block INTEGER,
    confirmed_hash TEXT,
    detail TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_status ON transactions (status, nonce);
CREATE INDEX IF NOT EXISTS transactions_ref ON transactions (kind, ref);
CREATE TABLE IF NOT EXISTS attempts (
    tx_hash TEXT PRIMARY KEY,
    tx_id INTEGER NOT NULL REFERENCES transactions (id),
    gas_price TEXT NOT NULL,
    raw BLOB NOT NULL,
    signed_at REAL NOT NULL,
    broadcast_at REAL
);
CREATE INDEX IF NOT EXISTS attempts_tx ON attempts (tx_id, signed_at);
"""
CHECKPOINTS_KEPT = 512


class RequestStatus(StrEnum):
    """Terminal: fulfilled (by us, confirmed), settled (fulfilled by someone else, or cancelled), expired,
    dropped (no longer on chain), failed (can never be served), skipped (not worth serving: fee policy)."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    FULFILLED = "fulfilled"
    SETTLED = "settled"
    EXPIRED = "expired"
    DROPPED = "dropped"
    FAILED = "failed"
    SKIPPED = "skipped"


class TxStatus(StrEnum):
    """queued (nonce held, not signed) -> signed (bytes durable, maybe not sent) -> broadcast -> confirmed
    (mined, `confirmations` deep, succeeded) | failed (mined and reverted) | replaced (its nonce handed to a
    self-transfer) | dropped (abandoned before anyone mined it; its nonce is free again)."""

    QUEUED = "queued"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    REPLACED = "replaced"
    DROPPED = "dropped"
    FAILED = "failed"


class BatchStatus(StrEnum):
    SUBMITTED = "submitted"
    ANCHORED = "anchored"
    SKIPPED = "skipped"


LIVE_TX = (TxStatus.QUEUED, TxStatus.SIGNED, TxStatus.BROADCAST)


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """What an InferenceRequested event says about a request."""

    id: str
    block_number: int
    model_hash: str
    input: bytes
    input_hash: str
    deadline: int
    callback_gas: int
    fee: int


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: str
    block_number: int
    model_hash: str
    input: bytes
    input_hash: str
    deadline: int
    callback_gas: int
    fee: int
    status: RequestStatus
    attempts: int
    detail: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    tx_hash: str
    gas_price: int
    raw: bytes
    signed_at: float
    broadcast_at: float | None


@dataclass(frozen=True, slots=True)
class TxRow:
    id: int
    kind: str
    ref: str
    guard: str
    nonce: int
    status: TxStatus
    to_address: str
    data: bytes
    value: int
    gas: int
    confirmed_block: int | None
    confirmed_hash: str | None
    detail: str | None
    created: float
    max_price: int | None  # the highest gas price this one may be signed at (None: the policy's cap)


@dataclass(frozen=True, slots=True)
class BatchRow:
    root: str
    enclave: str
    first: int
    count: int
    signature: str
    status: BatchStatus


def _open(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version != SCHEMA_VERSION and "requests" in tables:
        db.close()
        raise StateError(
            f"{path} was written by an older relay (schema {version}, this relay needs {SCHEMA_VERSION}): "
            "let its transactions settle, then start with a fresh --db"
        )
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db


class RelayState:
    """Scan position and checkpoints, requests, receipt batches and anchoring cursors."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = _open(self.path)
        self.txs = TxStore(self.db)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def bind_chain(self, chain_id: int, genesis_hash: bytes, contract: str) -> None:
        """Tie this state file to one chain and contract, or refuse: a relay started with the state of a
        reset devnet (same chain id, same deterministic contract address, another history) would resume
        its old scan position, re-price and cancel transactions that no longer exist and anchor receipts
        of enclaves the new contract has never registered."""
        binding = f"{chain_id}:0x{genesis_hash.hex()}:{contract.lower()}"
        with self.transaction() as db:
            stored = self.get_meta("chain")
            if stored is None:
                self.set_meta(db, "chain", binding)
                return
        if stored != binding:
            raise StateError(
                f"{self.path} belongs to chain/genesis/contract {stored}, not {binding}: "
                "start with a new state file (--db) for a new chain or contract"
            )

    # --- scanning ---------------------------------------------------------------------------------------

    def scanned_block(self, default: int) -> int:
        return int(self.get_meta("scanned_block", str(default)) or default)

    def record_scan(self, db: sqlite3.Connection, block: int, block_hash: str) -> None:
        """`block` (with its hash) is scanned; keeps the newest CHECKPOINTS_KEPT checkpoints."""
        self.set_meta(db, "scanned_block", str(block))
        db.execute(
            "INSERT OR REPLACE INTO checkpoints (block, hash, recorded) VALUES (?, ?, ?)",
            (block, block_hash, time.time()),
        )
        db.execute(
            "DELETE FROM checkpoints WHERE block NOT IN "
            "(SELECT block FROM checkpoints ORDER BY block DESC LIMIT ?)",
            (CHECKPOINTS_KEPT,),
        )

    def checkpoints(self) -> list[tuple[int, str]]:
        """(block, hash) of each scan step kept, oldest first."""
        return [
            (int(b), str(h)) for b, h in self.db.execute("SELECT block, hash FROM checkpoints ORDER BY block")
        ]

    def rewind(self, db: sqlite3.Connection, ancestor: int) -> float:
        """Forget what was scanned after `ancestor` (the newest block still canonical); returns when the
        ancestor was scanned (0 when it has no checkpoint): what was decided since may rest on lost blocks."""
        row = db.execute("SELECT recorded FROM checkpoints WHERE block = ?", (ancestor,)).fetchone()
        db.execute("DELETE FROM checkpoints WHERE block > ?", (ancestor,))
        self.set_meta(db, "scanned_block", str(ancestor))
        return float(row[0]) if row else 0.0

    # --- requests ---------------------------------------------------------------------------------------

    def upsert_request(self, db: sqlite3.Connection, event: RequestEvent) -> str:
        """Record a request seen on chain: 'new', 'changed' (a reorg re-created its id with another input:
        the stored one is replaced and the request re-opened) or 'same'."""
        row = db.execute("SELECT input_hash FROM requests WHERE id = ?", (event.id,)).fetchone()
        now = time.time()
        if row is None:
            db.execute(
                "INSERT INTO requests (id, block_number, model_hash, input, input_hash, deadline, "
                "callback_gas, fee, status, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.block_number,
                    event.model_hash,
                    event.input,
                    event.input_hash,
                    event.deadline,
                    event.callback_gas,
                    str(event.fee),
                    RequestStatus.PENDING,
                    now,
                ),
            )
            return "new"
        if row[0] == event.input_hash:
            db.execute("UPDATE requests SET block_number = ? WHERE id = ?", (event.block_number, event.id))
            return "same"
        db.execute(
            "UPDATE requests SET block_number = ?, model_hash = ?, input = ?, input_hash = ?, deadline = ?, "
            "callback_gas = ?, fee = ?, status = ?, attempts = 0, next_attempt = 0, detail = ?, updated = ? "
            "WHERE id = ?",
            (
                event.block_number,
                event.model_hash,
                event.input,
                event.input_hash,
                event.deadline,
                event.callback_gas,
                str(event.fee),
                RequestStatus.PENDING,
                "re-created on chain with another input",
                now,
                event.id,
            ),
        )
        return "changed"

    def reopen_skipped_if_policy_changed(self, policy: str) -> int:
        """Requests skipped under another fee policy are judged again under `policy` (a description)."""
        with self.transaction() as db:
            if self.get_meta("policy") == policy:
                return 0
            self.set_meta(db, "policy", policy)
            return db.execute(
                "UPDATE requests SET status = ?, next_attempt = 0, updated = ? WHERE status = ?",
                (RequestStatus.PENDING, time.time(), RequestStatus.SKIPPED),
            ).rowcount

    def reopen_after(self, db: sqlite3.Connection, block: int, since: float, also: list[str]) -> int:
        """After a reorg: closed requests from after `block`, or closed since `since` (a time), go back to
        pending, to be re-checked against the chain; those in `also` (whose transactions the reorg
        re-opened) go back to submitted."""
        closed = tuple(s for s in RequestStatus if s not in (RequestStatus.PENDING, RequestStatus.SUBMITTED))
        marks = ",".join("?" * len(closed))
        cursor = db.execute(
            f"UPDATE requests SET status = ?, next_attempt = 0, updated = ? "  # noqa: S608 - constant marks
            f"WHERE (block_number > ? OR updated >= ?) AND status IN ({marks}) AND id NOT IN "
            f"({','.join('?' * len(also))})",
            (RequestStatus.PENDING, time.time(), block, since, *closed, *also),
        )
        count = cursor.rowcount
        for request_id in also:
            count += db.execute(
                f"UPDATE requests SET status = ?, updated = ? WHERE id = ? AND status IN ({marks})",  # noqa: S608
                (RequestStatus.SUBMITTED, time.time(), request_id, *closed),
            ).rowcount
        return count

    _COLUMNS = (
        "id, block_number, model_hash, input, input_hash, deadline, callback_gas, fee, status, attempts, "
        "detail"
    )

    def _rows(self, where: str, params: tuple[object, ...], limit: int = -1) -> list[RequestRow]:
        """`where` is always one of this module's constant clauses; values go through parameters."""
        query = f"SELECT {self._COLUMNS} FROM requests WHERE {where} ORDER BY block_number, id LIMIT ?"  # noqa: S608
        return [
            RequestRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), RequestStatus(r[8]), r[9], r[10])
            for r in self.db.execute(query, (*params, limit)).fetchall()
        ]

    def due(self, now: float, limit: int = 32) -> list[RequestRow]:
        return self._rows("status = ? AND next_attempt <= ?", (RequestStatus.PENDING, now), limit)

    def submitted(self) -> list[RequestRow]:
        return self._rows("status = ?", (RequestStatus.SUBMITTED,))

    def request(self, request_id: str) -> RequestRow | None:
        rows = self._rows("id = ?", (request_id,))
        return rows[0] if rows else None

    def statuses(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, status FROM requests").fetchall())

    def set_status(self, request_id: str, status: RequestStatus, detail: str | None = None) -> None:
        self.db.execute(
            "UPDATE requests SET status = ?, detail = ?, updated = ? WHERE id = ?",
            (status, detail, time.time(), request_id),
        )

    def retry_later(self, request_id: str, attempts: int, delay: float, detail: str) -> None:
        self.db.execute(
            "UPDATE requests SET status = ?, attempts = ?, next_attempt = ?, detail = ?, updated = ? "
            "WHERE id = ?",
            (RequestStatus.PENDING, attempts, time.time() + delay, detail, time.time(), request_id),
        )

    # --- batches and cursors -----------------------------------------------------------------------------

    def cursor(self, enclave: str) -> int:
        """The next receipt index to anchor for the enclave with signing address `enclave`."""
        return int(self.get_meta(f"batch_cursor:{enclave.lower()}", "0") or 0)

    def set_cursor(self, db: sqlite3.Connection, enclave: str, index: int) -> None:
        self.set_meta(db, f"batch_cursor:{enclave.lower()}", str(index))

    def record_batch(
        self,
        db: sqlite3.Connection,
        *,
        root: str,
        enclave: str,
        first: int,
        count: int,
        signature: str,
        receipts: str,
        status: BatchStatus,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO batches (root, enclave, first, count, signature, receipts, status, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (root, enclave, first, count, signature, receipts, status, time.time()),
        )

    def submitted_batches(self) -> list[BatchRow]:
        rows = self.db.execute(
            "SELECT root, enclave, first, count, signature, status FROM batches WHERE status = ? "
            "ORDER BY updated",
            (BatchStatus.SUBMITTED,),
        ).fetchall()
        return [BatchRow(r[0], r[1], r[2], r[3], r[4], BatchStatus(r[5])) for r in rows]

    def set_batch_status(self, root: str, status: BatchStatus, detail: str | None = None) -> None:
        self.db.execute(
            "UPDATE batches SET status = ?, detail = ?, updated = ? WHERE root = ?",
            (status, detail, time.time(), root),
        )

    def reopen_batches(self, db: sqlite3.Connection, roots: list[str]) -> None:
        for root in roots:
            db.execute("UPDATE batches SET status = ? WHERE root = ?", (BatchStatus.SUBMITTED, root))

    def close(self) -> None:
        self.db.close()


class TxStore:
    """Every transaction the relay sends and every signed attempt of it (one nonce, rising gas prices)."""

    _COLUMNS = (
        "id, kind, ref, guard, nonce, status, to_address, data, value, gas, confirmed_block, confirmed_hash, "
        "detail, created, max_price"
    )

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _rows(self, where: str, params: tuple[object, ...]) -> list[TxRow]:
        """`where` is always one of this class's constant clauses; values go through parameters."""
        query = f"SELECT {self._COLUMNS} FROM transactions WHERE {where} ORDER BY nonce, id"  # noqa: S608
        return [
            TxRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                TxStatus(r[5]),
                r[6],
                r[7],
                int(r[8]),
                r[9],
                r[10],
                r[11],
                r[12],
                r[13],
                r[14],
            )
            for r in self.db.execute(query, params).fetchall()
        ]

    def create(
        self,
        *,
        kind: str,
        ref: str,
        guard: str,
        nonce: int,
        to_address: str,
        data: bytes,
        value: int,
        gas: int,
        max_price: int | None = None,
    ) -> TxRow:
        """A queued transaction holding `nonce` (committed: the nonce is taken before anything is signed)."""
        now = time.time()
        cursor = self.db.execute(
            "INSERT INTO transactions (kind, ref, guard, nonce, status, to_address, data, value, gas, "
            "max_price, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                ref,
                guard,
                nonce,
                TxStatus.QUEUED,
                to_address,
                data,
                str(value),
                gas,
                max_price,
                now,
                now,
            ),
        )
        row = self.get(int(cursor.lastrowid or 0))
        assert row is not None
        return row

    def get(self, tx_id: int) -> TxRow | None:
        rows = self._rows("id = ?", (tx_id,))
        return rows[0] if rows else None

    def live(self) -> list[TxRow]:
        return self._rows("status IN (?, ?, ?)", LIVE_TX)

    def latest_for(self, kind: str, ref: str) -> TxRow | None:
        """The newest transaction sent for `ref` (a request id or a batch root)."""
        rows = self._rows(
            "kind = ? AND ref = ? AND id = (SELECT MAX(id) FROM transactions WHERE kind = ? AND ref = ?)",
            (kind, ref, kind, ref),
        )
        return rows[0] if rows else None

    def held_nonces(self) -> set[int]:
        marks = ",".join("?" * len(LIVE_TX))
        query = f"SELECT nonce FROM transactions WHERE status IN ({marks})"  # noqa: S608 - constant marks
        return {int(n) for (n,) in self.db.execute(query, LIVE_TX)}

    def add_attempt(self, tx_id: int, tx_hash: str, raw: bytes, gas_price: int) -> None:
        """Persist a signed attempt before it is broadcast; the transaction is then `signed` (or stays
        `broadcast` when this attempt replaces one already sent)."""
        with self._transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO attempts (tx_hash, tx_id, gas_price, raw, signed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (tx_hash, tx_id, str(gas_price), raw, time.time()),
            )
            self.db.execute(
                "UPDATE transactions SET status = ?, updated = ? WHERE id = ? AND status = ?",
                (TxStatus.SIGNED, time.time(), tx_id, TxStatus.QUEUED),
            )

    def attempts(self, tx_id: int) -> list[Attempt]:
        """Newest first."""
        rows = self.db.execute(
            "SELECT tx_hash, gas_price, raw, signed_at, broadcast_at FROM attempts WHERE tx_id = ? "
            "ORDER BY signed_at DESC, rowid DESC",
            (tx_id,),
        ).fetchall()
        return [Attempt(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]

    def mark_broadcast(self, tx_id: int, tx_hash: str) -> None:
        now = time.time()
        with self._transaction():
            self.db.execute(
                "UPDATE attempts SET broadcast_at = ? WHERE tx_hash = ? AND broadcast_at IS NULL",
                (now, tx_hash),
            )
            self.db.execute(
                "UPDATE transactions SET status = ?, updated = ? WHERE id = ? AND status IN (?, ?)",
                (TxStatus.BROADCAST, now, tx_id, TxStatus.SIGNED, TxStatus.QUEUED),
            )

    def set_status(
        self,
        tx_id: int,
        status: TxStatus,
        detail: str | None = None,
        *,
        confirmed_block: int | None = None,
        confirmed_hash: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE transactions SET status = ?, detail = ?, confirmed_block = ?, confirmed_hash = ?, "
            "updated = ? WHERE id = ?",
            (status, detail, confirmed_block, confirmed_hash, time.time(), tx_id),
        )

    def note(self, tx_id: int, detail: str) -> None:
        self.db.execute(
            "UPDATE transactions SET detail = ?, updated = ? WHERE id = ?", (detail, time.time(), tx_id)
        )

    def reopen_mined_after(self, db: sqlite3.Connection, block: int) -> list[TxRow]:
        """After a reorg: transactions mined after `block` go back to `broadcast`, to be re-checked."""
        rows = self._rows(
            "status IN (?, ?) AND confirmed_block > ?", (TxStatus.CONFIRMED, TxStatus.FAILED, block)
        )
        for row in rows:
            db.execute(
                "UPDATE transactions SET status = ?, confirmed_block = NULL, confirmed_hash = NULL, "
                "detail = ?, updated = ? WHERE id = ?",
                (TxStatus.BROADCAST, "re-checking after a reorg", time.time(), row.id),
            )
        return rows

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
