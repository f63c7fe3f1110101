"""The relay's durable state: scan checkpoints, every request's status, every transaction it sends.

It lives in SQLite (a file, the default) or PostgreSQL, as --db says (relay.storage; `open_state`). Each
change is one committed transaction (SQLite: WAL, synchronous=FULL), so a relay killed at any instant
restarts from a consistent state: nothing seen is lost, and a transaction recorded as signed is re-broadcast
as the very same bytes rather than signed again. The schema is migrated when the state is opened. All of
the relay's SQL is in relay.sql; `db`, in the methods below, is an open relay.storage.Transaction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from . import sql
from .errors import LostClaim, StateError
from .storage import SCHEMA_VERSION, Backend, DbUrl, Transaction, open_backend, resolve_db

__all__ = [
    "CHECKPOINTS_KEPT",
    "LIVE_TX",
    "SCHEMA_VERSION",
    "Attempt",
    "BatchRow",
    "BatchStatus",
    "Claim",
    "RelayState",
    "RequestEvent",
    "RequestRow",
    "RequestStatus",
    "Transaction",
    "TxRow",
    "TxStatus",
    "TxStore",
    "open_state",
]

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
# A request is closed when it is neither pending nor submitted (relay.sql's CLOSED_MARKS has one mark each).
CLOSED = tuple(s for s in RequestStatus if s not in (RequestStatus.PENDING, RequestStatus.SUBMITTED))
assert len(CLOSED) == sql.CLOSED_MARKS.count("?")


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
    sender: str | None = None  # the account that signs it (None: a row from before schema 3, not adopted)


@dataclass(frozen=True, slots=True)
class Claim:
    """A request a worker has just claimed, and who held it before (None: nobody, or this worker)."""

    row: RequestRow
    previous: str | None
    fresh: bool = True  # not this worker's before (a new claim, not a renewal)

    @property
    def taken_over(self) -> bool:
        return self.previous is not None


@dataclass(frozen=True, slots=True)
class BatchRow:
    root: str
    enclave: str
    first: int
    count: int
    signature: str
    status: BatchStatus


def open_state(db: str | os.PathLike[str] | DbUrl | None = None) -> RelayState:
    """The relay's state in the database `db` names (relay.storage.parse_db_url: a file path,
    sqlite:///PATH or postgresql://...; None: $VERINFER_RELAY_DB, else relay.sqlite3), its schema migrated;
    StateError (one line) when it cannot be reached or used."""
    return RelayState(db if isinstance(db, DbUrl) else resolve_db(db))


class RelayState:
    """Scan position and checkpoints, requests, receipt batches and anchoring cursors."""

    def __init__(self, db: str | os.PathLike[str] | DbUrl | Backend) -> None:
        """`db`: a database URL or path (see open_state) or an open backend; the schema is migrated."""
        self.backend = db if isinstance(db, Backend) else open_backend(db)
        try:
            self.backend.migrate()
        except BaseException:
            self.backend.close()
            raise
        self.location = self.backend.location
        self.q = self.backend.queries
        self.txs = TxStore(self.backend)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.backend.transaction() as db:
            yield db

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> RelayState:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.backend.fetchone(self.q.meta_get, (key,))
        return str(row[0]) if row else default

    def set_meta(self, db: Transaction, key: str, value: str) -> None:
        db.execute(self.q.meta_set, (key, value))

    def bind_chain(self, chain_id: int, genesis_hash: bytes, contract: str) -> None:
        """Tie this state to one chain and contract, or refuse: a relay started with the state of a reset
        devnet (same chain id, same deterministic contract address, another history) would resume its old
        scan position, re-price and cancel transactions that no longer exist and anchor receipts of
        enclaves the new contract has never registered."""
        binding = f"{chain_id}:0x{genesis_hash.hex()}:{contract.lower()}"
        with self.transaction() as db:
            stored = self.get_meta("chain")
            if stored is None:
                self.set_meta(db, "chain", binding)
                return
        if stored != binding:
            raise StateError(
                f"{self.location} belongs to chain/genesis/contract {stored}, not {binding}: "
                "start with a new state file (--db) for a new chain or contract"
            )

    # --- scanning ---------------------------------------------------------------------------------------

    def scanned_block(self, default: int) -> int:
        return int(self.get_meta("scanned_block", str(default)) or default)

    def record_scan(self, db: Transaction, block: int, block_hash: str) -> None:
        """`block` (with its hash) is scanned; keeps the newest CHECKPOINTS_KEPT checkpoints."""
        self.set_meta(db, "scanned_block", str(block))
        db.execute(self.q.checkpoint_put, (block, block_hash, time.time()))
        db.execute(self.q.checkpoints_prune, (CHECKPOINTS_KEPT,))

    def checkpoints(self) -> list[tuple[int, str]]:
        """(block, hash) of each scan step kept, oldest first."""
        return [(int(b), str(h)) for b, h in self.backend.fetchall(self.q.checkpoints)]

    def rewind(self, db: Transaction, ancestor: int) -> float:
        """Forget what was scanned after `ancestor` (the newest block still canonical); returns when the
        ancestor was scanned (0 when it has no checkpoint): what was decided since may rest on lost blocks."""
        row = db.fetchone(self.q.checkpoint_recorded, (ancestor,))
        db.execute(self.q.checkpoints_forget_after, (ancestor,))
        self.set_meta(db, "scanned_block", str(ancestor))
        return float(row[0]) if row else 0.0

    # --- requests ---------------------------------------------------------------------------------------

    def upsert_request(self, db: Transaction, event: RequestEvent) -> str:
        """Record a request seen on chain: 'new', 'changed' (a reorg re-created its id with another input:
        the stored one is replaced and the request re-opened) or 'same'."""
        row = db.fetchone(self.q.request_input_hash, (event.id,))
        now = time.time()
        if row is None:
            db.execute(
                self.q.request_insert,
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
            db.execute(self.q.request_seen_again, (event.block_number, event.id))
            return "same"
        db.execute(
            self.q.request_replace,
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
                self.q.requests_reopen_skipped, (RequestStatus.PENDING, time.time(), RequestStatus.SKIPPED)
            )

    def reopen_after(self, db: Transaction, block: int, since: float, also: list[str]) -> int:
        """After a reorg: closed requests from after `block`, or closed since `since` (a time), go back to
        pending, to be re-checked against the chain; those in `also` (whose transactions the reorg
        re-opened) go back to submitted."""
        count = 0
        for request_id in also:  # first: submitted is not closed, so the update below leaves them be
            count += db.execute(
                self.q.request_reopen_submitted, (RequestStatus.SUBMITTED, time.time(), request_id, *CLOSED)
            )
        count += db.execute(
            self.q.requests_reopen_closed, (RequestStatus.PENDING, time.time(), block, since, *CLOSED)
        )
        return count

    def _rows(self, statement: str, params: tuple[object, ...]) -> list[RequestRow]:
        return [
            RequestRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), RequestStatus(r[8]), r[9], r[10])
            for r in self.backend.fetchall(statement, params)
        ]

    def due(self, now: float, limit: int = 32) -> list[RequestRow]:
        return self._rows(self.q.requests_due, (RequestStatus.PENDING, now, limit))

    def submitted(self) -> list[RequestRow]:
        return self._rows(self.q.requests_with_status, (RequestStatus.SUBMITTED,))

    def request(self, request_id: str) -> RequestRow | None:
        rows = self._rows(self.q.request, (request_id,))
        return rows[0] if rows else None

    def statuses(self) -> dict[str, str]:
        return {str(i): str(s) for i, s in self.backend.fetchall(self.q.request_statuses)}

    def set_status(self, request_id: str, status: RequestStatus, detail: str | None = None) -> None:
        self.backend.execute(self.q.request_set_status, (status, detail, time.time(), request_id))

    def retry_later(self, request_id: str, attempts: int, delay: float, detail: str) -> None:
        self.backend.execute(
            self.q.request_retry_later,
            (RequestStatus.PENDING, attempts, time.time() + delay, detail, time.time(), request_id),
        )

    # --- claims (relay.workers) ---------------------------------------------------------------------------

    def claim(
        self,
        worker: str,
        *,
        now: float,
        lease_s: float,
        limit: int,
        pending: bool = True,
        submitted: bool = True,
    ) -> list[Claim]:
        """Claim (or keep) up to `limit` requests for `worker` until now + lease_s: pending ones that are due,
        submitted ones, that no other worker holds under an unexpired lease. On PostgreSQL the rows are
        locked with FOR UPDATE SKIP LOCKED in a transaction without the write lock, so workers claiming at
        once take different requests and never wait for each other."""
        wanted_pending = RequestStatus.PENDING if pending else "-"
        wanted_submitted = RequestStatus.SUBMITTED if submitted else "-"
        claims = []
        with self.backend.transaction(exclusive=False) as db:
            rows = db.fetchall(
                self.q.requests_claimable, (wanted_pending, now, wanted_submitted, worker, now, limit)
            )
            for r in rows:
                db.execute(self.q.request_claim, (worker, now + lease_s, r[0]))
                row = RequestRow(
                    r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), RequestStatus(r[8]), r[9], r[10]
                )
                previous = r[11] if r[11] is not None and r[11] != worker else None
                claims.append(Claim(row, previous, r[11] != worker))
        return claims

    def hold(self, db: Transaction, request_id: str, worker: str, *, now: float, lease_s: float) -> bool:
        """Inside `db`: whether `worker` still holds `request_id` (its lease renewed if so). Checked in the
        transaction that records a fulfilment, so that a worker that was taken over never sends one. A lease
        that ran out with nobody taking the request over is still this worker's: a take-over changes
        `claimed_by`, under the row's lock, so while it is `worker` nobody else has claimed the request."""
        return db.execute(self.q.request_hold, (now + lease_s, request_id, worker)) == 1

    def renew(self, worker: str, *, now: float, lease_s: float) -> int:
        """Extend every lease `worker` holds on a pending or submitted request; how many."""
        return self.backend.execute(
            self.q.requests_renew, (now + lease_s, worker, RequestStatus.PENDING, RequestStatus.SUBMITTED)
        )

    def release(self, worker: str) -> int:
        """Give up `worker`'s claims (a clean shutdown): others may take them at once."""
        return self.backend.execute(
            self.q.requests_release, (worker, RequestStatus.PENDING, RequestStatus.SUBMITTED)
        )

    def set_status_owned(
        self, request_id: str, worker: str, status: RequestStatus, detail: str | None = None
    ) -> bool:
        """set_status, unless another worker holds the request now (False then)."""
        return (
            self.backend.execute(
                self.q.request_set_status_owned, (status, detail, time.time(), request_id, worker)
            )
            == 1
        )

    def retry_later_owned(
        self, request_id: str, worker: str, attempts: int, delay: float, detail: str
    ) -> None:
        """retry_later, unless another worker holds the request now."""
        self.backend.execute(
            self.q.request_retry_later_owned,
            (RequestStatus.PENDING, attempts, time.time() + delay, detail, time.time(), request_id, worker),
        )

    # --- batches and cursors -----------------------------------------------------------------------------

    def cursor(self, enclave: str) -> int:
        """The next receipt index to anchor for the enclave with signing address `enclave`."""
        return int(self.get_meta(f"batch_cursor:{enclave.lower()}", "0") or 0)

    def set_cursor(self, db: Transaction, enclave: str, index: int) -> None:
        self.set_meta(db, f"batch_cursor:{enclave.lower()}", str(index))

    def record_batch(
        self,
        db: Transaction,
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
            self.q.batch_insert, (root, enclave, first, count, signature, receipts, status, time.time())
        )

    def submitted_batches(self) -> list[BatchRow]:
        rows = self.backend.fetchall(self.q.batches_with_status, (BatchStatus.SUBMITTED,))
        return [BatchRow(r[0], r[1], r[2], r[3], r[4], BatchStatus(r[5])) for r in rows]

    def set_batch_status(self, root: str, status: BatchStatus, detail: str | None = None) -> None:
        self.backend.execute(self.q.batch_set_status, (status, detail, time.time(), root))

    def reopen_batches(self, db: Transaction, roots: list[str]) -> None:
        for root in roots:
            db.execute(self.q.batch_reopen, (BatchStatus.SUBMITTED, root))


class TxStore:
    """Every transaction the relay sends and every signed attempt of it (one nonce, rising gas prices).

    `sender` None: every row (one relay, one key); bound to a sender (`for_sender`), `live` and
    `held_nonces` are that account's only and `create` records it: a worker's transaction manager handles
    its own nonces, whoever else shares the database."""

    def __init__(self, backend: Backend, sender: str | None = None) -> None:
        self.backend = backend
        self.q = backend.queries
        self.sender = sender

    def for_sender(self, sender: str) -> TxStore:
        return TxStore(self.backend, sender)

    def adopt(self, sender: str) -> int:
        """Rows recorded before transactions had a sender are `sender`'s (the one relay that wrote them)."""
        return self.backend.execute(self.q.txs_adopt, (sender,))

    def senders(self) -> set[str]:
        """Every account that has sent a transaction recorded here (the fleet's workers)."""
        return {str(s) for (s,) in self.backend.fetchall(self.q.tx_senders)}

    def status(self, tx_id: int) -> TxStatus | None:
        row = self.backend.fetchone(self.q.tx_status, (tx_id,))
        return TxStatus(row[0]) if row else None

    def drop_if(self, tx_id: int, statuses: tuple[TxStatus, ...], detail: str) -> bool:
        """Mark another worker's transaction dropped if it is still in one of `statuses`; whether it was."""
        marks = (*statuses, *(statuses[-1:] * (3 - len(statuses))))
        return (
            self.backend.execute(self.q.tx_drop_if, (TxStatus.DROPPED, detail, time.time(), tx_id, *marks))
            == 1
        )

    def _rows(self, statement: str, params: tuple[object, ...]) -> list[TxRow]:
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
                r[15],
            )
            for r in self.backend.fetchall(statement, params)
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
        check: Callable[[Transaction], bool] | None = None,
    ) -> TxRow:
        """A queued transaction holding `nonce` (committed: the nonce is taken before anything is signed).
        `check(db)`, run first in the same transaction, may refuse it: LostClaim, and nothing is recorded."""
        now = time.time()
        with self.backend.transaction() as db:
            if check is not None and not check(db):
                raise LostClaim(f"{kind} {ref}: another worker holds it now")
            tx_id = db.insert(
                self.q.tx_insert,
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
                    self.sender,
                ),
            )
        row = self.get(tx_id)
        assert row is not None
        return row

    def get(self, tx_id: int) -> TxRow | None:
        rows = self._rows(self.q.tx, (tx_id,))
        return rows[0] if rows else None

    def live(self) -> list[TxRow]:
        if self.sender is not None:
            return self._rows(self.q.txs_live_of, (self.sender, *LIVE_TX))
        return self._rows(self.q.txs_live, LIVE_TX)

    def latest_for(self, kind: str, ref: str) -> TxRow | None:
        """The newest transaction sent for `ref` (a request id or a batch root)."""
        rows = self._rows(self.q.tx_latest_for, (kind, ref, kind, ref))
        return rows[0] if rows else None

    def held_nonces(self) -> set[int]:
        if self.sender is not None:
            rows = self.backend.fetchall(self.q.tx_held_nonces_of, (self.sender, *LIVE_TX))
        else:
            rows = self.backend.fetchall(self.q.tx_held_nonces, LIVE_TX)
        return {int(n) for (n,) in rows}

    def add_attempt(self, tx_id: int, tx_hash: str, raw: bytes, gas_price: int) -> None:
        """Persist a signed attempt before it is broadcast; the transaction is then `signed` (or stays
        `broadcast` when this attempt replaces one already sent)."""
        with self.backend.transaction() as db:
            db.execute(self.q.attempt_insert, (tx_hash, tx_id, str(gas_price), raw, time.time()))
            db.execute(self.q.tx_mark_signed, (TxStatus.SIGNED, time.time(), tx_id, TxStatus.QUEUED))

    def attempts(self, tx_id: int) -> list[Attempt]:
        """Newest first."""
        rows = self.backend.fetchall(self.q.attempts, (tx_id,))
        return [Attempt(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]

    def mark_broadcast(self, tx_id: int, tx_hash: str) -> None:
        now = time.time()
        with self.backend.transaction() as db:
            db.execute(self.q.attempt_mark_broadcast, (now, tx_hash))
            db.execute(
                self.q.tx_mark_broadcast, (TxStatus.BROADCAST, now, tx_id, TxStatus.SIGNED, TxStatus.QUEUED)
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
        self.backend.execute(
            self.q.tx_set_status, (status, detail, confirmed_block, confirmed_hash, time.time(), tx_id)
        )

    def note(self, tx_id: int, detail: str) -> None:
        self.backend.execute(self.q.tx_note, (detail, time.time(), tx_id))

    def reopen_mined_after(self, db: Transaction, block: int) -> list[TxRow]:
        """After a reorg: transactions mined after `block` go back to `broadcast`, to be re-checked."""
        rows = self._rows(self.q.txs_mined_after, (TxStatus.CONFIRMED, TxStatus.FAILED, block))
        for row in rows:
            db.execute(
                self.q.tx_reopen, (TxStatus.BROADCAST, "re-checking after a reorg", time.time(), row.id)
            )
        return rows
