"""All of the relay's SQL, for both of its databases: SQLite (the default, one file) and PostgreSQL.

The schema is a list of numbered migrations, each with its statements for either dialect, applied in order
by relay.storage when a database is opened; `schema_migrations` records which ones a database has. Version 2
is the schema relay state files had before migrations were numbered (SQLite's `PRAGMA user_version` 2; such
a file is adopted as it is); nothing upgrades the version 1 files of older relays.

Every statement the relay runs is a field of `Queries`, written once for SQLite (`?` parameters) and turned
into PostgreSQL's (`%s` parameters) with the few statements that differ replaced: upserts (`INSERT OR ...`
is SQLite's; PostgreSQL says `ON CONFLICT`), the new row's id (`RETURNING id`) and the insertion order of
attempts (SQLite's implicit rowid, PostgreSQL's `seq` column). Callers pass values as parameters only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]
SQLITE: Dialect = "sqlite"
POSTGRESQL: Dialect = "postgresql"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...] = field(repr=False)
    postgresql: tuple[str, ...] = field(repr=False)

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == SQLITE else self.postgresql


# Version 2: exactly the DDL of the relay's SQLite schema 2, and its PostgreSQL equivalent. Amounts in wei
# (fee, value, gas_price) are decimal text in both: they are uint256 on chain, beyond BIGINT.
_SQLITE_V2 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS requests (
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
)""",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests (status, next_attempt)",
    """CREATE TABLE IF NOT EXISTS checkpoints (
    block INTEGER PRIMARY KEY, hash TEXT NOT NULL, recorded REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS batches (
    root TEXT PRIMARY KEY,
    enclave TEXT NOT NULL,
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    signature TEXT NOT NULL,
    receipts TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS transactions (
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
)""",
    "CREATE INDEX IF NOT EXISTS transactions_status ON transactions (status, nonce)",
    "CREATE INDEX IF NOT EXISTS transactions_ref ON transactions (kind, ref)",
    """CREATE TABLE IF NOT EXISTS attempts (
    tx_hash TEXT PRIMARY KEY,
    tx_id INTEGER NOT NULL REFERENCES transactions (id),
    gas_price TEXT NOT NULL,
    raw BLOB NOT NULL,
    signed_at REAL NOT NULL,
    broadcast_at REAL
)""",
    "CREATE INDEX IF NOT EXISTS attempts_tx ON attempts (tx_id, signed_at)",
)
_POSTGRESQL_V2 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    block_number BIGINT NOT NULL,
    model_hash TEXT NOT NULL,
    input BYTEA NOT NULL,
    input_hash TEXT NOT NULL,
    deadline BIGINT NOT NULL,
    callback_gas BIGINT NOT NULL,
    fee TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
    detail TEXT,
    updated DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX requests_status ON requests (status, next_attempt)",
    """CREATE TABLE checkpoints (
    block BIGINT PRIMARY KEY, hash TEXT NOT NULL, recorded DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE batches (
    root TEXT PRIMARY KEY,
    enclave TEXT NOT NULL,
    first BIGINT NOT NULL,
    count BIGINT NOT NULL,
    signature TEXT NOT NULL,
    receipts TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE transactions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    guard TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    status TEXT NOT NULL,
    to_address TEXT NOT NULL,
    data BYTEA NOT NULL,
    value TEXT NOT NULL,
    gas BIGINT NOT NULL,
    max_price BIGINT,
    confirmed_block BIGINT,
    confirmed_hash TEXT,
    detail TEXT,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX transactions_status ON transactions (status, nonce)",
    "CREATE INDEX transactions_ref ON transactions (kind, ref)",
    # seq: the insertion order, which SQLite keeps in its implicit rowid (newest attempt first on a tie)
    """CREATE TABLE attempts (
    tx_hash TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    tx_id BIGINT NOT NULL REFERENCES transactions (id),
    gas_price TEXT NOT NULL,
    raw BYTEA NOT NULL,
    signed_at DOUBLE PRECISION NOT NULL,
    broadcast_at DOUBLE PRECISION
)""",
    "CREATE INDEX attempts_tx ON attempts (tx_id, signed_at)",
)

# Version 3: many relay workers on one database (relay.workers). A request is claimed by one worker at a time
# (`claimed_by`, its relay address) until `lease_until` (a time): the worker renews the lease while it works
# on it, and another takes it over once it has expired. A transaction records the account that signed it
# (`sender`): each worker's transaction manager handles the nonces of its own account only. Rows from before
# have no sender; the first relay to open the database adopts them (one relay, one key, wrote them).
_SQLITE_V3 = (
    "ALTER TABLE requests ADD COLUMN claimed_by TEXT",
    "ALTER TABLE requests ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
    "ALTER TABLE transactions ADD COLUMN sender TEXT",
    "CREATE INDEX IF NOT EXISTS transactions_sender ON transactions (sender, status, nonce)",
)
_POSTGRESQL_V3 = (
    "ALTER TABLE requests ADD COLUMN claimed_by TEXT",
    "ALTER TABLE requests ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0",
    "ALTER TABLE transactions ADD COLUMN sender TEXT",
    "CREATE INDEX transactions_sender ON transactions (sender, status, nonce)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "relay state: meta, requests, checkpoints, batches, transactions, attempts",
        _SQLITE_V2,
        _POSTGRESQL_V2,
    ),
    Migration(
        3,
        "relay workers: request claims with leases, the sender of each transaction",
        _SQLITE_V3,
        _POSTGRESQL_V3,
    ),
)
# The oldest schema a database may have and still be opened: older SQLite files cannot be upgraded.
FIRST_VERSION = 2

# --- bookkeeping of migrations ------------------------------------------------------------------------------

SQLITE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied REAL NOT NULL)"
)
POSTGRESQL_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
)
SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
SQLITE_USER_VERSION = "PRAGMA user_version"
SQLITE_SET_USER_VERSION = "PRAGMA user_version = {version:d}"  # PRAGMA takes no parameters: an int only
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")
# Whether a PostgreSQL database has had a migration (the table, in the connection's search_path).
POSTGRESQL_HAS_MIGRATIONS = "SELECT to_regclass('schema_migrations') IS NOT NULL"
# Transaction-level advisory locks (released at COMMIT or ROLLBACK): one serialises the migrations of
# workers that start at once, the other makes a relay's write transaction exclusive as SQLite's
# BEGIN IMMEDIATE does. The keys are "vrfinfer" and "vrfwrite" read as big-endian 64-bit integers.
POSTGRESQL_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(8534996846830314866)"
POSTGRESQL_WRITE_LOCK = "SELECT pg_advisory_xact_lock(8534996907027166309)"
# The fleet's leader holds this session-level advisory lock ("vrflead!") on a connection of its own while it
# lives; the server releases it when that connection closes (the worker exited, was killed, lost the network).
LEADER_LOCK_KEY = 8534996856917811489
POSTGRESQL_TRY_LEADER = "SELECT pg_try_advisory_lock(%s)"
POSTGRESQL_ALIVE = "SELECT 1"
# A leader that stops gives the lock back at once; closing the connection alone frees it only when the
# server has reaped the backend, which a successor checking right away may not see yet.
POSTGRESQL_GIVE_UP_LEADER = "SELECT pg_advisory_unlock(%s)"
# On the leader's connection, the server probes the leader's socket when it has been silent for 10 s and drops
# it after 3 unanswered probes 5 s apart: a leader whose host vanished (power, network) frees the lock in
# about 25 s, not after the operating system's default of two hours.
POSTGRESQL_LEADER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)

# --- the relay's statements ---------------------------------------------------------------------------------

_REQUEST = (
    "SELECT id, block_number, model_hash, input, input_hash, deadline, callback_gas, fee, status, attempts, "
    "detail FROM requests"
)
_TX = (
    "SELECT id, kind, ref, guard, nonce, status, to_address, data, value, gas, confirmed_block, "
    "confirmed_hash, detail, created, max_price, sender FROM transactions"
)
_CLAIMABLE = (
    "SELECT id, block_number, model_hash, input, input_hash, deadline, callback_gas, fee, status, attempts, "
    "detail, claimed_by, lease_until FROM requests"
)
# A request's status after it is closed (neither pending nor submitted): relay.state checks the list.
CLOSED_MARKS = "?, ?, ?, ?, ?, ?"


@dataclass(frozen=True, slots=True)
class Queries:
    applied_migrations: str
    record_migration: str
    # meta
    meta_get: str
    meta_set: str
    # checkpoints
    checkpoint_put: str
    checkpoints_prune: str
    checkpoints: str
    checkpoint_recorded: str
    checkpoints_forget_after: str
    # requests
    request_input_hash: str
    request_insert: str
    request_seen_again: str
    request_replace: str
    requests_reopen_skipped: str
    requests_reopen_closed: str
    request_reopen_submitted: str
    requests_due: str
    requests_with_status: str
    request: str
    request_statuses: str
    request_set_status: str
    request_retry_later: str
    # claims (relay.workers): a worker's requests, leased
    requests_claimable: str
    request_claim: str
    request_hold: str
    requests_renew: str
    requests_release: str
    request_set_status_owned: str
    request_retry_later_owned: str
    # batches
    batch_insert: str
    batches_with_status: str
    batch_set_status: str
    batch_reopen: str
    # transactions and their attempts
    tx_insert: str
    tx: str
    txs_live: str
    tx_latest_for: str
    tx_held_nonces: str
    txs_live_of: str
    tx_held_nonces_of: str
    txs_adopt: str
    tx_senders: str
    tx_status: str
    tx_drop_if: str
    txs_mined_after: str
    tx_mark_signed: str
    tx_mark_broadcast: str
    tx_set_status: str
    tx_note: str
    tx_reopen: str
    attempt_insert: str
    attempts: str
    attempt_mark_broadcast: str


SQLITE_QUERIES = Queries(
    applied_migrations="SELECT version, description, applied FROM schema_migrations ORDER BY version",
    record_migration="INSERT INTO schema_migrations (version, description, applied) VALUES (?, ?, ?)",
    meta_get="SELECT value FROM meta WHERE key = ?",
    meta_set=(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    ),
    checkpoint_put="INSERT OR REPLACE INTO checkpoints (block, hash, recorded) VALUES (?, ?, ?)",
    checkpoints_prune=(
        "DELETE FROM checkpoints WHERE block NOT IN "
        "(SELECT block FROM checkpoints ORDER BY block DESC LIMIT ?)"
    ),
    checkpoints="SELECT block, hash FROM checkpoints ORDER BY block",
    checkpoint_recorded="SELECT recorded FROM checkpoints WHERE block = ?",
    checkpoints_forget_after="DELETE FROM checkpoints WHERE block > ?",
    request_input_hash="SELECT input_hash FROM requests WHERE id = ?",
    request_insert=(
        "INSERT INTO requests (id, block_number, model_hash, input, input_hash, deadline, callback_gas, fee, "
        "status, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    request_seen_again="UPDATE requests SET block_number = ? WHERE id = ?",
    request_replace=(
        "UPDATE requests SET block_number = ?, model_hash = ?, input = ?, input_hash = ?, deadline = ?, "
        "callback_gas = ?, fee = ?, status = ?, attempts = 0, next_attempt = 0, detail = ?, updated = ? "
        "WHERE id = ?"
    ),
    requests_reopen_skipped="UPDATE requests SET status = ?, next_attempt = 0, updated = ? WHERE status = ?",
    requests_reopen_closed=(
        "UPDATE requests SET status = ?, next_attempt = 0, updated = ? "
        f"WHERE (block_number > ? OR updated >= ?) AND status IN ({CLOSED_MARKS})"
    ),
    request_reopen_submitted=(
        f"UPDATE requests SET status = ?, updated = ? WHERE id = ? AND status IN ({CLOSED_MARKS})"
    ),
    requests_due=f"{_REQUEST} WHERE status = ? AND next_attempt <= ? ORDER BY block_number, id LIMIT ?",
    requests_with_status=f"{_REQUEST} WHERE status = ? ORDER BY block_number, id",
    request=f"{_REQUEST} WHERE id = ?",
    request_statuses="SELECT id, status FROM requests",
    request_set_status="UPDATE requests SET status = ?, detail = ?, updated = ? WHERE id = ?",
    request_retry_later=(
        "UPDATE requests SET status = ?, attempts = ?, next_attempt = ?, detail = ?, updated = ? WHERE id = ?"
    ),
    batch_insert=(
        "INSERT OR IGNORE INTO batches (root, enclave, first, count, signature, receipts, status, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    batches_with_status=(
        "SELECT root, enclave, first, count, signature, status FROM batches WHERE status = ? ORDER BY updated"
    ),
    batch_set_status="UPDATE batches SET status = ?, detail = ?, updated = ? WHERE root = ?",
    batch_reopen="UPDATE batches SET status = ? WHERE root = ?",
    # A pending request due now, or a submitted one, that nobody holds: never claimed, claimed by this
    # worker, or whose lease has run out (PostgreSQL adds FOR UPDATE SKIP LOCKED: rows another worker is
    # claiming at this instant are passed over, not waited for).
    requests_claimable=(
        f"{_CLAIMABLE} WHERE ((status = ? AND next_attempt <= ?) OR status = ?) "
        "AND (claimed_by IS NULL OR claimed_by = ? OR lease_until < ?) ORDER BY block_number, id LIMIT ?"
    ),
    request_claim="UPDATE requests SET claimed_by = ?, lease_until = ? WHERE id = ?",
    # Still ours: the lease renewed (0 rows: another worker has taken the request over).
    request_hold="UPDATE requests SET lease_until = ? WHERE id = ? AND claimed_by = ?",
    requests_renew="UPDATE requests SET lease_until = ? WHERE claimed_by = ? AND status IN (?, ?)",
    requests_release=(
        "UPDATE requests SET claimed_by = NULL, lease_until = 0 WHERE claimed_by = ? AND status IN (?, ?)"
    ),
    request_set_status_owned=(
        "UPDATE requests SET status = ?, detail = ?, updated = ? "
        "WHERE id = ? AND (claimed_by IS NULL OR claimed_by = ?)"
    ),
    request_retry_later_owned=(
        "UPDATE requests SET status = ?, attempts = ?, next_attempt = ?, detail = ?, updated = ? "
        "WHERE id = ? AND (claimed_by IS NULL OR claimed_by = ?)"
    ),
    tx_insert=(
        "INSERT INTO transactions (kind, ref, guard, nonce, status, to_address, data, value, gas, max_price, "
        "created, updated, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    tx=f"{_TX} WHERE id = ?",
    txs_live=f"{_TX} WHERE status IN (?, ?, ?) ORDER BY nonce, id",
    tx_latest_for=(
        f"{_TX} WHERE kind = ? AND ref = ? AND id = "
        "(SELECT MAX(id) FROM transactions WHERE kind = ? AND ref = ?)"
    ),
    tx_held_nonces="SELECT nonce FROM transactions WHERE status IN (?, ?, ?)",
    txs_live_of=f"{_TX} WHERE sender = ? AND status IN (?, ?, ?) ORDER BY nonce, id",
    tx_held_nonces_of="SELECT nonce FROM transactions WHERE sender = ? AND status IN (?, ?, ?)",
    txs_adopt="UPDATE transactions SET sender = ? WHERE sender IS NULL",
    tx_senders="SELECT DISTINCT sender FROM transactions WHERE sender IS NOT NULL",
    tx_status="SELECT status FROM transactions WHERE id = ?",
    # Another worker's transaction found dead (or never signed) by the worker that took its request over.
    tx_drop_if=(
        "UPDATE transactions SET status = ?, detail = ?, updated = ? WHERE id = ? AND status IN (?, ?, ?)"
    ),
    txs_mined_after=f"{_TX} WHERE status IN (?, ?) AND confirmed_block > ? ORDER BY nonce, id",
    tx_mark_signed="UPDATE transactions SET status = ?, updated = ? WHERE id = ? AND status = ?",
    tx_mark_broadcast="UPDATE transactions SET status = ?, updated = ? WHERE id = ? AND status IN (?, ?)",
    tx_set_status=(
        "UPDATE transactions SET status = ?, detail = ?, confirmed_block = ?, confirmed_hash = ?, "
        "updated = ? WHERE id = ?"
    ),
    tx_note="UPDATE transactions SET detail = ?, updated = ? WHERE id = ?",
    tx_reopen=(
        "UPDATE transactions SET status = ?, confirmed_block = NULL, confirmed_hash = NULL, detail = ?, "
        "updated = ? WHERE id = ?"
    ),
    attempt_insert=(
        "INSERT OR IGNORE INTO attempts (tx_hash, tx_id, gas_price, raw, signed_at) VALUES (?, ?, ?, ?, ?)"
    ),
    attempts=(
        "SELECT tx_hash, gas_price, raw, signed_at, broadcast_at FROM attempts WHERE tx_id = ? "
        "ORDER BY signed_at DESC, rowid DESC"
    ),
    attempt_mark_broadcast="UPDATE attempts SET broadcast_at = ? WHERE tx_hash = ? AND broadcast_at IS NULL",
)


def _postgresql(statement: str) -> str:
    """A SQLite statement with PostgreSQL's parameter marks (the statements hold no other `?` or `%`)."""
    assert "%" not in statement, statement
    return statement.replace("?", "%s")


POSTGRESQL_QUERIES = dataclasses.replace(
    Queries(**{f.name: _postgresql(getattr(SQLITE_QUERIES, f.name)) for f in dataclasses.fields(Queries)}),
    checkpoint_put=(
        "INSERT INTO checkpoints (block, hash, recorded) VALUES (%s, %s, %s) "
        "ON CONFLICT (block) DO UPDATE SET hash = excluded.hash, recorded = excluded.recorded"
    ),
    batch_insert=(
        "INSERT INTO batches (root, enclave, first, count, signature, receipts, status, updated) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (root) DO NOTHING"
    ),
    tx_insert=_postgresql(SQLITE_QUERIES.tx_insert) + " RETURNING id",
    requests_claimable=_postgresql(SQLITE_QUERIES.requests_claimable) + " FOR UPDATE SKIP LOCKED",
    attempt_insert=(
        "INSERT INTO attempts (tx_hash, tx_id, gas_price, raw, signed_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (tx_hash) DO NOTHING"
    ),
    attempts=(
        "SELECT tx_hash, gas_price, raw, signed_at, broadcast_at FROM attempts WHERE tx_id = %s "
        "ORDER BY signed_at DESC, seq DESC"
    ),
)
QUERIES: dict[Dialect, Queries] = {SQLITE: SQLITE_QUERIES, POSTGRESQL: POSTGRESQL_QUERIES}
