"""The relay's durable state in SQLite: scan position, every request's status, its signed transaction.

Each change is one committed SQLite transaction (WAL, synchronous=FULL), so a relay killed at any instant
restarts from a consistent state: nothing seen is lost, and a transaction recorded as signed is re-broadcast
as the very same bytes rather than signed again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    block_number INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    input BLOB NOT NULL,
    deadline INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    tx_hash TEXT,
    tx_raw BLOB,
    tx_nonce INTEGER,
    submitted_at REAL,
    detail TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, next_attempt);
CREATE TABLE IF NOT EXISTS batches (
    root TEXT PRIMARY KEY,
    enclave TEXT NOT NULL,
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    signature TEXT NOT NULL,
    receipts TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    tx_raw BLOB,
    updated REAL NOT NULL
);
"""

# Request statuses. Terminal: fulfilled (by us, confirmed), settled (fulfilled by someone else or cancelled),
# expired, dropped (no longer on chain), failed (the input can never be served).
PENDING, SUBMITTED, FULFILLED, SETTLED, EXPIRED, DROPPED, FAILED = (
    "pending",
    "submitted",
    "fulfilled",
    "settled",
    "expired",
    "dropped",
    "failed",
)
OPEN = (PENDING, SUBMITTED)


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: str
    block_number: int
    model_hash: str
    input: bytes
    deadline: int
    status: str
    attempts: int
    tx_hash: str | None
    tx_raw: bytes | None
    tx_nonce: int | None
    submitted_at: float | None


class RelayState:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def add_request(
        self,
        db: sqlite3.Connection,
        request_id: str,
        *,
        block: int,
        model_hash: str,
        data: bytes,
        deadline: int,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO requests (id, block_number, model_hash, input, deadline, status, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, block, model_hash, data, deadline, PENDING, time.time()),
        )

    def reopen_from(self, db: sqlite3.Connection, block: int) -> int:
        """After a reorg: requests from `block` on go back to pending, to be re-checked against the chain."""
        cursor = db.execute(
            "UPDATE requests SET status = ?, next_attempt = 0, updated = ? "
            "WHERE block_number >= ? AND status NOT IN (?, ?)",
            (PENDING, time.time(), block, PENDING, SUBMITTED),
        )
        return cursor.rowcount

    def _rows(self, where: str, params: tuple[object, ...], limit: int = -1) -> list[RequestRow]:
        """`where` is always one of this module's constant clauses; values go through parameters."""
        columns = "id, block_number, model_hash, input, deadline, status, attempts, tx_hash, tx_raw, tx_nonce"
        query = (
            f"SELECT {columns}, submitted_at FROM requests WHERE {where} ORDER BY block_number, id LIMIT ?"  # noqa: S608
        )
        rows = self.db.execute(
            query,
            (*params, limit),
        ).fetchall()
        return [RequestRow(*row) for row in rows]

    def due(self, now: float, limit: int = 32) -> list[RequestRow]:
        return self._rows("status = ? AND next_attempt <= ?", (PENDING, now), limit)

    def submitted(self) -> list[RequestRow]:
        return self._rows("status = ?", (SUBMITTED,))

    def request(self, request_id: str) -> RequestRow | None:
        rows = self._rows("id = ?", (request_id,))
        return rows[0] if rows else None

    def statuses(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, status FROM requests").fetchall())

    def set_status(self, request_id: str, status: str, detail: str | None = None) -> None:
        self.db.execute(
            "UPDATE requests SET status = ?, detail = ?, updated = ? WHERE id = ?",
            (status, detail, time.time(), request_id),
        )

    def retry_later(self, request_id: str, attempts: int, delay: float, detail: str) -> None:
        self.db.execute(
            "UPDATE requests SET status = ?, attempts = ?, next_attempt = ?, detail = ?, tx_hash = NULL, "
            "tx_raw = NULL, tx_nonce = NULL, updated = ? WHERE id = ?",
            (PENDING, attempts, time.time() + delay, detail, time.time(), request_id),
        )

    def record_signed(self, request_id: str, tx_hash: str, raw: bytes, nonce: int) -> None:
        """Persist the signed fulfil transaction before it is broadcast."""
        self.db.execute(
            "UPDATE requests SET status = ?, tx_hash = ?, tx_raw = ?, tx_nonce = ?, submitted_at = ?, "
            "updated = ? WHERE id = ?",
            (SUBMITTED, tx_hash, raw, nonce, time.time(), time.time(), request_id),
        )

    def close(self) -> None:
        self.db.close()
