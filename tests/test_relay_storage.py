"""The relay's storage on both backends (relay.storage, relay.sql): what --db means, the schema's migrations,
the state's behaviour, `verinfer relay db status|migrate`, and one clear line for every way a database can
be out of reach (no server, wrong port or password, no such database, a schema newer than the code)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from relay import sql, storage
from relay.errors import StateError
from relay.state import BatchStatus, RelayState, RequestEvent, RequestStatus, TxStatus, open_state
from relay.storage import DB_ENV, inspect, parse_db_url, resolve_db
from verinfer.cli import main
from verinfer.processes import ANVIL_KEYS, VERINFER, free_port

from .pg_server import PASSWORD, PASSWORD_ROLE, PostgresServer, running_postgres
from .relay_db import RelayDb, rows
from .test_relay import wait_for

# The SQLite schema of the relays before migrations were numbered (relay/state.py's SCHEMA, user_version 2).
OLD_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, block_number INTEGER NOT NULL, model_hash TEXT NOT NULL, input BLOB NOT NULL,
    input_hash TEXT NOT NULL, deadline INTEGER NOT NULL, callback_gas INTEGER NOT NULL, fee TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    detail TEXT, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, next_attempt);
CREATE TABLE IF NOT EXISTS checkpoints (
    block INTEGER PRIMARY KEY, hash TEXT NOT NULL, recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    root TEXT PRIMARY KEY, enclave TEXT NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
    signature TEXT NOT NULL, receipts TEXT NOT NULL, status TEXT NOT NULL, detail TEXT, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ref TEXT NOT NULL, guard TEXT NOT NULL,
    nonce INTEGER NOT NULL, status TEXT NOT NULL, to_address TEXT NOT NULL, data BLOB NOT NULL,
    value TEXT NOT NULL, gas INTEGER NOT NULL, max_price INTEGER, confirmed_block INTEGER,
    confirmed_hash TEXT, detail TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_status ON transactions (status, nonce);
CREATE INDEX IF NOT EXISTS transactions_ref ON transactions (kind, ref);
CREATE TABLE IF NOT EXISTS attempts (
    tx_hash TEXT PRIMARY KEY, tx_id INTEGER NOT NULL REFERENCES transactions (id), gas_price TEXT NOT NULL,
    raw BLOB NOT NULL, signed_at REAL NOT NULL, broadcast_at REAL
);
CREATE INDEX IF NOT EXISTS attempts_tx ON attempts (tx_id, signed_at);
"""
RELAY_TABLES = {"meta", "requests", "checkpoints", "batches", "transactions", "attempts"}


def event(request_id: str = "0x01", data: bytes = b"\x00input", input_hash: str = "0xaa") -> RequestEvent:
    return RequestEvent(request_id, 10, "0xmodel", data, input_hash, 2_000_000_000, 300_000, 10**30)


def write(db: RelayDb, statement: str) -> None:
    """One statement on the relay's database from outside the relay (sqlite3 or psycopg)."""
    if db.backend == "sqlite":
        with closing(sqlite3.connect(db.url, isolation_level=None)) as conn:
            conn.execute(statement)
    else:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute(statement)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- what --db means -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dialect", "target", "location"),
    [
        ("relay.sqlite3", "sqlite", "relay.sqlite3", "relay.sqlite3"),
        ("/var/lib/relay/state.db", "sqlite", "/var/lib/relay/state.db", "/var/lib/relay/state.db"),
        ("sqlite:///relay.sqlite3", "sqlite", "relay.sqlite3", "relay.sqlite3"),
        ("sqlite:////var/lib/relay.sqlite3", "sqlite", "/var/lib/relay.sqlite3", "/var/lib/relay.sqlite3"),
        (
            "postgresql://relay@db.internal:5433/relay",
            "postgresql",
            "postgresql://relay@db.internal:5433/relay",
            "postgresql://relay@db.internal:5433/relay",
        ),
        (
            "postgres://relay:pa%40ss@127.0.0.1/relay?sslmode=require",
            "postgresql",
            "postgres://relay:pa%40ss@127.0.0.1/relay?sslmode=require",
            "postgresql://relay@127.0.0.1/relay?sslmode=require",
        ),
        (
            "postgresql:///relay?host=/var/run/postgresql&password=hunter2&user=relay",
            "postgresql",
            "postgresql:///relay?host=/var/run/postgresql&password=hunter2&user=relay",
            "postgresql:///relay?host=/var/run/postgresql&user=relay",
        ),
    ],
)
def test_db_urls_are_read_one_way(value: str, dialect: str, target: str, location: str) -> None:
    url = parse_db_url(value)
    assert (url.dialect, url.target, url.location) == (dialect, target, location)
    for secret in ("pa%40ss", "pa@ss", "hunter2"):
        assert secret not in url.location and secret not in repr(url)
    assert parse_db_url(Path("x/relay.sqlite3")).target == "x/relay.sqlite3"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "no state database named"),
        ("mysql://relay@localhost/relay", "unsupported state database scheme mysql://"),
        ("sqlite://relay.sqlite3", "no host"),
        ("sqlite:///", "no host"),
        ("sqlite:///relay.sqlite3?mode=ro", "takes no options"),
    ],
)
def test_bad_db_urls_are_refused_plainly(value: str, says: str) -> None:
    with pytest.raises(StateError, match=says):
        parse_db_url(value)


def test_the_environment_names_the_database_when_db_is_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(DB_ENV, raising=False)
    assert resolve_db(None) == "relay.sqlite3"
    monkeypatch.setenv(DB_ENV, "  ")
    assert resolve_db(None) == "relay.sqlite3"
    monkeypatch.setenv(DB_ENV, f"sqlite:///{tmp_path}/env.sqlite3")
    assert resolve_db(None) == f"sqlite:///{tmp_path}/env.sqlite3"
    assert resolve_db("given.sqlite3") == "given.sqlite3"  # --db wins
    code, out, _ = run_cli(capsys, "relay", "db", "migrate")
    assert code == 0 and f"location: {tmp_path}/env.sqlite3" in out
    assert (tmp_path / "env.sqlite3").exists()
    with open_state() as state:  # open_state(None) reads the environment too
        assert state.location == f"{tmp_path}/env.sqlite3"


# --- migrations ---------------------------------------------------------------------------------------------


def test_an_empty_database_is_migrated_when_opened(relay_db: RelayDb) -> None:
    before = inspect(relay_db.url)
    assert (before.version, [m.version for m in before.pending]) == (0, [2, 3])
    assert before.exists == (relay_db.backend == "postgresql")  # a SQLite file is not created by a look
    with open_state(relay_db.url):
        pass
    after = inspect(relay_db.url)
    assert (after.version, after.pending, after.code_version) == (3, (), storage.SCHEMA_VERSION)
    [(version, description, applied), (version3, description3, _)] = rows(
        relay_db, "SELECT version, description, applied FROM schema_migrations ORDER BY version"
    )
    assert version == 2 and "requests" in description and applied > 0
    assert version3 == 3 and "claims" in description3
    with open_state(relay_db.url):  # opening again applies nothing more
        pass
    assert len(rows(relay_db, "SELECT version FROM schema_migrations")) == 2
    if relay_db.backend == "sqlite":
        assert rows(relay_db, "PRAGMA user_version") == [(3,)]


def old_relay_file(path: Path, user_version: int = 2) -> None:
    """A state file as relays wrote it before migrations were numbered, with a little of everything."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(OLD_SCHEMA_V2)
        conn.execute(f"PRAGMA user_version = {user_version}")
        conn.execute("INSERT INTO meta VALUES ('chain', '31337:0x01:0xc0'), ('scanned_block', '41')")
        conn.execute(
            "INSERT INTO requests (id, block_number, model_hash, input, input_hash, deadline, callback_gas, "
            "fee, status, detail, updated) VALUES ('0x01', 40, '0xm', x'00ff', '0xh', 99, 300000, "
            "'1000000000000000000000000000000', 'submitted', 'tx 1', 1.5)"
        )
        conn.execute("INSERT INTO checkpoints VALUES (41, '0xb41', 1.5)")
        conn.execute(
            "INSERT INTO transactions (kind, ref, guard, nonce, status, to_address, data, value, gas, "
            "created, updated) "
            "VALUES ('fulfil', '0x01', '0xh', 7, 'broadcast', '0xto', x'01', '0', 90000, 1, 1)"
        )
        for tx_hash, price in (("0xfirst", 10), ("0xsecond", 12)):  # signed in the same instant
            conn.execute(
                "INSERT INTO attempts (tx_hash, tx_id, gas_price, raw, signed_at) "
                "VALUES (?, 1, ?, x'02', 5.0)",
                (tx_hash, str(price)),
            )


def test_a_schema_version_2_sqlite_file_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old_relay_file(path)
    with closing(sqlite3.connect(path)) as conn:
        ddl_before = sorted(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
    status = inspect(path)
    assert (status.version, [m.version for m in status.pending]) == (2, [3]) and "user_version" in status.note
    with open_state(path) as state:
        assert state.get_meta("chain") == "31337:0x01:0xc0" and state.scanned_block(-1) == 41
        row = state.request("0x01")
        assert row is not None and row.input == b"\x00\xff" and row.fee == 10**30
        assert row.status == RequestStatus.SUBMITTED and state.checkpoints() == [(41, "0xb41")]
        [tx] = state.txs.live()
        assert (tx.id, tx.nonce, tx.status) == (1, 7, TxStatus.BROADCAST)
        assert [a.tx_hash for a in state.txs.attempts(1)] == ["0xsecond", "0xfirst"]  # newest first
        created = state.txs.create(
            kind="anchor", ref="0xroot", guard="", nonce=8, to_address="0xto", data=b"", value=0, gas=1
        )
        assert created.id == 2
    with closing(sqlite3.connect(path)) as conn:
        ddl_after = sorted(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
        [(version, description), (version3, _)] = conn.execute(
            "SELECT version, description FROM schema_migrations ORDER BY version"
        )
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
    assert (version, description.endswith("(adopted)"), version3) == (2, True, 3)
    # The relay's own tables are as they were but for migration 3's columns and index; schema_migrations is
    # the one table added.
    changed = {"requests", "transactions", "transactions_sender", "schema_migrations"}
    assert [item for item in ddl_after if item[0] not in changed] == [
        item for item in ddl_before if item[0] not in changed
    ]
    assert inspect(path).note == ""


@pytest.mark.parametrize("user_version", [0, 1])
def test_a_state_file_of_an_older_relay_is_refused(tmp_path: Path, user_version: int) -> None:
    path = tmp_path / "v1.sqlite3"
    old_relay_file(path, user_version)
    for attempt in (lambda: open_state(path), lambda: inspect(path)):
        with pytest.raises(StateError, match=f"older relay \\(schema {user_version}, this relay needs 3\\)"):
            attempt()


def newer_schema(db: RelayDb) -> None:
    """What a relay of schema version 99 leaves: its migration recorded."""
    with open_state(db.url):
        pass
    write(
        db, "INSERT INTO schema_migrations (version, description, applied) VALUES (99, 'from the future', 1)"
    )
    if db.backend == "sqlite":
        write(db, "PRAGMA user_version = 99")


def test_a_schema_newer_than_the_code_is_refused(
    relay_db: RelayDb, capsys: pytest.CaptureFixture[str]
) -> None:
    newer_schema(relay_db)
    says = f"{relay_db.url} has schema version 99, newer than this relay knows (version 3)"
    with pytest.raises(StateError, match="newer than this relay") as info:
        open_state(relay_db.url)
    assert says in str(info.value)
    for argv in (
        ("relay", "db", "status", "--db", relay_db.url),
        ("relay", "db", "migrate", "--db", relay_db.url),
    ):
        code, out, err = run_cli(capsys, *argv)
        assert (code, out) == (2, "") and err == f"verinfer: error: {info.value}\n"
    assert max(v for (v,) in rows(relay_db, "SELECT version FROM schema_migrations")) == 99  # untouched


def test_a_newer_sqlite_file_without_its_migrations_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    old_relay_file(path, user_version=4)
    with pytest.raises(StateError, match="schema version 4, newer than this relay knows"):
        open_state(path)


PROBE = sql.Migration(
    4, "test: a probe table", ("CREATE TABLE probe (x INTEGER)",), ("CREATE TABLE probe (x BIGINT)",)
)


def test_pending_migrations_are_listed_then_applied(
    relay_db: RelayDb, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_state(relay_db.url):
        pass
    monkeypatch.setattr(sql, "MIGRATIONS", (*sql.MIGRATIONS, PROBE))  # a relay one version ahead
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 4)
    code, out, _ = run_cli(capsys, "relay", "db", "status", "--db", relay_db.url)
    assert code == 0
    assert f"backend: {relay_db.backend}\n" in out and f"location: {relay_db.url}\n" in out
    assert "schema version: 3 in the database, 4 in this relay\n" in out
    assert "pending migrations: 1 " in out and "  4: test: a probe table\n" in out
    code, out, _ = run_cli(capsys, "relay", "db", "migrate", "--db", relay_db.url)
    assert code == 0 and out.startswith("applied migration 4: test: a probe table\n")
    assert "schema version: 4 in the database, 4 in this relay\npending migrations: none\n" in out
    assert rows(relay_db, "SELECT COUNT(*) FROM probe") == [(0,)]
    code, out, _ = run_cli(capsys, "relay", "db", "migrate", "--db", relay_db.url)
    assert code == 0 and out.startswith("nothing to migrate\n")
    if relay_db.backend == "sqlite":
        assert rows(relay_db, "PRAGMA user_version") == [(4,)]
    monkeypatch.undo()  # back to this code: the database is now ahead of it
    with pytest.raises(StateError, match="schema version 4, newer"):
        open_state(relay_db.url)


def open_at_once(db: str | Path, workers: int = 6) -> list[BaseException]:
    """`workers` threads opening the state at the same moment, as relay workers starting together; what
    they raised."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            open_state(db).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_workers_starting_at_once_migrate_once(relay_db: RelayDb) -> None:
    """On PostgreSQL an advisory lock serialises the migrations (SQLite: BEGIN IMMEDIATE)."""
    assert open_at_once(relay_db.url) == []
    assert rows(relay_db, "SELECT version FROM schema_migrations ORDER BY version") == [(2,), (3,)]


def test_sqlite_workers_starting_at_once_never_find_the_file_locked(tmp_path: Path) -> None:
    """Regression: six connections switching a new file to WAL at once were answered "database is locked"
    at once, without waiting, in about one race in 25 (the test above failed so in a clean `make test`)."""
    for attempt in range(100):
        assert open_at_once(tmp_path / f"relay-{attempt}.sqlite3") == [], f"race {attempt}"


# --- the state on either backend --------------------------------------------------------------------------


def test_the_state_behaves_the_same_on_both_backends(
    relay_db: RelayDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relay.state

    monkeypatch.setattr(relay.state, "CHECKPOINTS_KEPT", 3)
    with open_state(relay_db.url) as state:
        with state.transaction() as db:
            assert state.upsert_request(db, event()) == "new"
            assert state.upsert_request(db, event("0x02")) == "new"
            assert state.upsert_request(db, event()) == "same"
        for block in range(1, 6):
            with state.transaction() as db:
                state.record_scan(db, block, f"0xb{block}")
        assert state.checkpoints() == [(3, "0xb3"), (4, "0xb4"), (5, "0xb5")] and state.scanned_block(0) == 5
        assert [r.id for r in state.due(now=1e12)] == ["0x01", "0x02"]
        assert [r.id for r in state.due(now=1e12, limit=1)] == ["0x01"]
        state.retry_later("0x02", 1, 3600.0, "later")
        assert [r.id for r in state.due(now=0)] == ["0x01"]
        state.set_status("0x01", RequestStatus.FULFILLED, "done: \x00 a NUL from a hostile enclave")
        assert state.statuses() == {"0x01": "fulfilled", "0x02": "pending"}
        row = state.request("0x01")
        assert row is not None and row.detail is not None and row.detail.startswith("done: ")
        with state.transaction() as db:
            assert state.upsert_request(db, event(data=b"other", input_hash="0xbb")) == "changed"
        row = state.request("0x01")
        assert row is not None and (row.status, row.input, row.attempts) == ("pending", b"other", 0)
        # Reorgs: a closed request after the fork is re-opened, one whose transaction was re-opened too
        state.set_status("0x01", RequestStatus.SETTLED)
        state.set_status("0x02", RequestStatus.EXPIRED)
        with state.transaction() as db:
            since = state.rewind(db, 4)
            assert state.reopen_after(db, 0, since, ["0x02"]) == 2
        assert state.statuses() == {"0x01": "pending", "0x02": "submitted"}
        assert state.checkpoints()[-1] == (4, "0xb4") and state.scanned_block(0) == 4
        with state.transaction() as db:
            assert state.reopen_after(db, 0, 0.0, []) == 0  # nothing closed
        # Batches and cursors
        with state.transaction() as db:
            for _ in range(2):  # recorded once
                state.record_batch(
                    db, root="0xr", enclave="0xE", first=0, count=2, signature="0xs", receipts="[]",
                    status=BatchStatus.SUBMITTED,
                )  # fmt: skip
            state.set_cursor(db, "0xE", 2)
        assert [b.root for b in state.submitted_batches()] == ["0xr"] and state.cursor("0xe") == 2
        # Transactions and attempts
        txs = state.txs
        first = txs.create(
            kind="fulfil",
            ref="0x01",
            guard="0xbb",
            nonce=5,
            to_address="0xto",
            data=b"\x00",
            value=10**20,
            gas=9,
        )
        second = txs.create(
            kind="fulfil", ref="0x01", guard="0xbb", nonce=6, to_address="0xto", data=b"", value=0, gas=9,
            max_price=10**11,
        )  # fmt: skip
        assert second.id > first.id and first.value == 10**20 and second.max_price == 10**11
        assert txs.latest_for("fulfil", "0x01") == second and txs.held_nonces() == {5, 6}
        txs.add_attempt(first.id, "0xa1", b"raw1", 10)
        txs.add_attempt(first.id, "0xa1", b"raw1", 10)  # the same attempt again: kept once
        txs.add_attempt(first.id, "0xa2", b"raw2", 12)
        assert [(a.tx_hash, a.gas_price) for a in txs.attempts(first.id)] == [("0xa2", 12), ("0xa1", 10)]
        txs.mark_broadcast(first.id, "0xa2")
        txs.set_status(second.id, TxStatus.DROPPED, "no longer needed")
        assert [(t.id, t.status) for t in txs.live()] == [(first.id, TxStatus.BROADCAST)]
        txs.set_status(first.id, TxStatus.CONFIRMED, confirmed_block=7, confirmed_hash="0xa2")
        txs.note(first.id, "a note")
        with state.transaction() as db:
            reopened = txs.reopen_mined_after(db, 6)
        assert [t.id for t in reopened] == [first.id]
        again = txs.get(first.id)
        assert again is not None and (again.status, again.confirmed_block) == (TxStatus.BROADCAST, None)


def test_a_failed_transaction_leaves_nothing(relay_db: RelayDb) -> None:
    """Every change is one transaction: an exception anywhere in it (a SIGKILL, in effect) undoes all of it,
    a nested one (TxStore's) included."""
    with open_state(relay_db.url) as state:
        tx = state.txs.create(kind="k", ref="r", guard="", nonce=1, to_address="0x", data=b"", value=0, gas=1)
        with pytest.raises(KeyboardInterrupt), state.transaction() as db:
            state.upsert_request(db, event())
            state.set_meta(db, "scanned_block", "9")
            state.txs.add_attempt(tx.id, "0xa", b"raw", 1)
            raise KeyboardInterrupt
        assert state.statuses() == {} and state.scanned_block(-1) == -1 and state.txs.attempts(tx.id) == []
        assert state.txs.get(tx.id).status == TxStatus.QUEUED  # type: ignore[union-attr]


# --- relay db status | migrate, and the ways a database is out of reach -----------------------------------


def test_db_status_and_migrate_never_print_a_password(
    postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    database = postgres_server.create_database(owner=PASSWORD_ROLE)
    shown = f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres_server.port}/{database}"
    in_url = postgres_server.url(database, user=PASSWORD_ROLE, password=PASSWORD)
    in_query = f"{shown}?password={PASSWORD}&application_name=probe"
    printed = []
    code, out, err = run_cli(capsys, "relay", "db", "status", "--db", in_url)
    assert code == 0, err
    printed.append(out + err)
    assert out == (
        f"backend: postgresql\nlocation: {shown}\n"
        "schema version: 0 in the database, 3 in this relay\n"
        "pending migrations: 2 (applied by `verinfer relay db migrate` or at start)\n"
        "  2: relay state: meta, requests, checkpoints, batches, transactions, attempts\n"
        "  3: relay workers: request claims with leases, the sender of each transaction\n"
    )
    code, out, err = run_cli(capsys, "relay", "db", "migrate", "--db", in_query)
    assert code == 0, err
    printed.append(out + err)
    assert out == (
        "applied migration 2: relay state: meta, requests, checkpoints, batches, transactions, attempts\n"
        "applied migration 3: relay workers: request claims with leases, the sender of each transaction\n"
        f"backend: postgresql\nlocation: {shown}?application_name=probe\n"
        "schema version: 3 in the database, 3 in this relay\npending migrations: none\n"
    )
    code, out, err = run_cli(capsys, "relay", "db", "status", "--db", in_query)
    assert code == 0 and "pending migrations: none\n" in out
    printed.append(out + err)
    assert all(PASSWORD not in text for text in printed)


def test_db_status_of_a_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state.sqlite3"
    code, out, _ = run_cli(capsys, "relay", "db", "status", "--db", f"sqlite:///{path}")
    assert code == 0 and not path.exists()  # status creates nothing
    assert out == (
        f"backend: sqlite\nlocation: {path}\n"
        "schema version: 0 in the database (the file does not exist yet), 3 in this relay\n"
        "pending migrations: 2 (applied by `verinfer relay db migrate` or at start)\n"
        "  2: relay state: meta, requests, checkpoints, batches, transactions, attempts\n"
        "  3: relay workers: request claims with leases, the sender of each transaction\n"
    )
    code, out, _ = run_cli(capsys, "relay", "db", "migrate", "--db", str(path))
    assert code == 0 and out.startswith("applied migration 2: ") and path.exists()


def unreachable_cases(server: PostgresServer, silent_port: int) -> list[tuple[str, str, str]]:
    """(case, --db, what the one line must say)."""
    return [
        (
            "nothing listening",
            f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/relay",
            "connection refused",
        ),
        (
            "a port that never answers",
            f"postgresql://relay:{PASSWORD}@127.0.0.1:{silent_port}/relay?connect_timeout=1",
            "no answer within 1 s",
        ),
        (
            "wrong password",
            server.url("postgres", user=PASSWORD_ROLE, password=PASSWORD + "-wrong"),
            "wrong user name or password",
        ),
        ("no such database", server.url("no_such_database"), 'no such database (database "no_such_database"'),
    ]


def test_an_unreachable_database_is_one_line_and_a_failure(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """`relay db status` and `relay run`: exit 2, one line saying what is wrong; no traceback, no password."""
    env = {**os.environ, "VERINFER_KEY": ANVIL_KEYS[4]}
    env.pop(DB_ENV, None)
    run = ["relay", "run", "--rpc", "http://127.0.0.1:1", "--contract", "0x" + "11" * 20, "--enclave", "x"]
    silent = socket.socket()  # connections are accepted (by the kernel) and never answered
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    with closing(silent):
        for case, url, says in unreachable_cases(postgres_server, silent.getsockname()[1]):
            for argv in (["relay", "db", "status", "--db", url], [*run, "--chain-id", "1", "--db", url]):
                result = subprocess.run(
                    [VERINFER, *argv], env=env, capture_output=True, text=True, timeout=60, check=False,
                    cwd=tmp_path,
                )  # fmt: skip
                lines = result.stderr.splitlines()
                assert result.returncode == 2 and len(lines) == 1, (case, argv[1], result.stderr)
                assert lines[0].startswith("verinfer: error: cannot open the relay database postgresql://")
                assert says in lines[0], (case, lines[0])
                assert PASSWORD not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no relay.sqlite3 made on the side


def test_a_newer_schema_stops_relay_run_in_one_line(relay_db: RelayDb, tmp_path: Path) -> None:
    newer_schema(relay_db)
    env = {**os.environ, "VERINFER_KEY": ANVIL_KEYS[4]}
    argv = ["relay", "run", "--rpc", "http://127.0.0.1:1", "--contract", "0x" + "11" * 20, "--enclave", "x"]
    result = subprocess.run(
        [VERINFER, *argv, "--chain-id", "1", "--db", relay_db.url],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"verinfer: error: {relay_db.url} has schema version 99, newer than this relay knows (version 3): "
        "a newer verinfer migrated it; upgrade this relay, or use another database"
    ]


def answers(state: RelayState) -> bool:
    try:
        state.statuses()
    except StateError:
        return False
    return True


def test_a_server_that_goes_away_is_a_state_error_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's loop retries on a StateError (a RelayError) as on an RPC outage; once the server is back,
    the pool replaces its dead connections and the same state object carries on."""
    from relay import storage_postgres

    monkeypatch.setattr(storage_postgres, "POOL_TIMEOUT_S", 2.0)
    with running_postgres() as server:
        url = server.url(server.create_database())
        with open_state(url) as state:
            with state.transaction() as db:
                state.upsert_request(db, event())
            server.stop()
            with pytest.raises(StateError, match=f"the relay database {url} is unavailable"):
                state.statuses()
            with pytest.raises(StateError, match="is unavailable"), state.transaction() as db:
                state.set_meta(db, "x", "y")
            server.start()
            wait_for(lambda: answers(state), timeout=30, what="the state to answer again")
            assert state.statuses() == {"0x01": "pending"}
            # A connection killed under the relay (a failover, an administrator) is replaced as well.
            server.admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'verinfer-relay'"
            )
            assert state.request("0x01") is not None
