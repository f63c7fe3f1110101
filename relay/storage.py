"""Where the relay keeps its state: a SQLite file (the default) or a PostgreSQL database, chosen by a URL.

- `parse_db_url` reads what --db (or $VERINFER_RELAY_DB) says: a file path or `sqlite:///PATH` is SQLite,
  `postgresql://USER@HOST:PORT/DBNAME` (or `postgres://`) is PostgreSQL. A password may be in the URL, but
  only `DbUrl.location`, which has none, is ever shown.
- A `Backend` runs relay.sql's statements. `with backend.transaction() as tx` is one committed transaction,
  rolled back on any exception; a statement run outside one commits on its own (SQLite's autocommit). Inside
  a transaction, every statement of the same thread joins it, so a read sees what the transaction wrote.
- SQLite: one connection, WAL, synchronous=FULL, BEGIN IMMEDIATE (one writer at a time). PostgreSQL: psycopg
  3 through a psycopg_pool.ConnectionPool; a write transaction first takes an advisory lock, as exclusive
  as SQLite's BEGIN IMMEDIATE, and connections are checked before use, so one lost with a server restart is
  replaced instead of failing the relay's next step.
- `migrate` applies relay.sql's pending migrations in one transaction (on PostgreSQL under an advisory lock,
  so that workers starting at once apply each once); `status` reads the schema version without writing. A
  database whose schema is newer than this code's is refused (StateError), and so is one too old to upgrade.
- Every failure to reach or use the database is a StateError of one line (server down, wrong port, wrong
  credentials, missing database), never a traceback.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import sql
from .errors import StateError

DB_ENV = "VERINFER_RELAY_DB"
DEFAULT_DB = "relay.sqlite3"
SCHEMA_VERSION = sql.MIGRATIONS[-1].version
SQLITE_BUSY_TIMEOUT_S = 30

Row = tuple[Any, ...]
Params = Sequence[object]


# --- which database ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DbUrl:
    dialect: sql.Dialect
    target: str = field(repr=False)  # the SQLite path, or the libpq URL (a password included: never shown)
    location: str  # what may be shown: the path, or the URL without its password
    secrets: tuple[str, ...] = field(default=(), repr=False)  # kept out of every message


def resolve_db(value: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    """What --db gave, else $VERINFER_RELAY_DB (when set and not empty), else relay.sqlite3."""
    if value is not None:
        return value
    return os.environ.get(DB_ENV, "").strip() or DEFAULT_DB


USAGE = "give a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"


def parse_db_url(value: str | os.PathLike[str]) -> DbUrl:
    """The one reading of --db: StateError (saying what is accepted) for anything else."""
    text = os.fspath(value)
    if not text.strip():
        raise StateError(f"no state database named: {USAGE}")
    if "://" not in text:
        return DbUrl(sql.SQLITE, text, text)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "sqlite":
        # sqlite:///relay.sqlite3 is relative, sqlite:////var/lib/relay.sqlite3 absolute (as in SQLAlchemy)
        if not rest.startswith("/") or len(rest) < 2:
            raise StateError(
                f"{text}: a SQLite URL names a file and no host: sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        if "?" in rest or "#" in rest:
            raise StateError(f"{text}: a SQLite URL takes no options (give the file path itself)")
        path = rest[1:]
        return DbUrl(sql.SQLITE, path, path)
    if scheme in ("postgresql", "postgres"):
        return _postgresql_url(text, rest)
    shown = scheme if len(scheme) <= 20 and scheme.isalnum() else "that"
    raise StateError(f"unsupported state database scheme {shown}://: {USAGE}")


def _postgresql_url(text: str, rest: str) -> DbUrl:
    """The URL as libpq reads it; its location without the password (user info or password= parameter)."""
    netloc, _, after = rest.partition("/")
    path, _, query = after.partition("?")
    query = query.partition("#")[0]
    userinfo, at, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    secrets = [password, unquote(password)] if colon else []
    kept = []
    for item in query.split("&") if query else []:
        key, _, item_value = item.partition("=")
        if unquote(key) == "password":
            secrets += [item_value, unquote(item_value)]
        else:
            kept.append(item)
    location = f"postgresql://{user}{at}{hostport}/{path}" + (f"?{'&'.join(kept)}" if kept else "")
    return DbUrl(
        sql.POSTGRESQL, text, location, tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    )


def one_line(message: str, secrets: Sequence[str] = ()) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return " ".join(message.split())


# --- transactions ------------------------------------------------------------------------------------------


class Transaction(ABC):
    """An open transaction: what `with state.transaction() as db` gives, and what the relay's methods that
    change several things at once take as `db`. Statements are relay.sql's; values go in `params` only."""

    @abstractmethod
    def execute(self, statement: str, params: Params = ()) -> int:
        """Run a statement; the number of rows it changed."""

    @abstractmethod
    def fetchall(self, statement: str, params: Params = ()) -> list[Row]: ...

    def fetchone(self, statement: str, params: Params = ()) -> Row | None:
        rows = self.fetchall(statement, params)
        return rows[0] if rows else None

    @abstractmethod
    def insert(self, statement: str, params: Params = ()) -> int:
        """Run an INSERT (relay.sql's `*_insert`); the new row's id."""


class _SqliteTransaction(Transaction):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, statement: str, params: Params = ()) -> int:
        return self.db.execute(statement, params).rowcount

    def fetchall(self, statement: str, params: Params = ()) -> list[Row]:
        return self.db.execute(statement, params).fetchall()

    def insert(self, statement: str, params: Params = ()) -> int:
        return int(self.db.execute(statement, params).lastrowid or 0)


# --- the schema's status --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    dialect: sql.Dialect
    location: str
    version: int  # the database's schema version; 0: no schema yet
    pending: tuple[sql.Migration, ...]
    exists: bool = True  # False: a SQLite file that does not exist yet
    note: str = ""

    @property
    def code_version(self) -> int:
        return SCHEMA_VERSION


def _check_version(location: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{location} has schema version {version}, newer than this relay knows (version "
            f"{SCHEMA_VERSION}): a newer verinfer migrated it; upgrade this relay, or use another database"
        )


def _pending(version: int) -> tuple[sql.Migration, ...]:
    return tuple(m for m in sql.MIGRATIONS if m.version > version)


# --- backends ----------------------------------------------------------------------------------------------


class Backend(ABC):
    """One relay database; see the module's docstring."""

    def __init__(self, url: DbUrl) -> None:
        self.url = url
        self.dialect = url.dialect
        self.location = url.location
        self.queries = sql.QUERIES[url.dialect]
        self._local = threading.local()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run `closer` when this backend is closed (a connection of its own kept beside the pool, such as
        relay.workers's leader connection: closing the state gives the leadership up)."""
        self._closers.append(closer)

    def _run_closers(self) -> None:
        for closer in self._closers:
            closer()
        self._closers.clear()

    # --- statements and transactions

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[Transaction]:
        """One committed transaction, rolled back on any exception; opened inside another, it joins it.
        `exclusive=False` (PostgreSQL): without the write lock, for statements that lock the rows they take
        (SELECT ... FOR UPDATE SKIP LOCKED), so that workers claiming work do not wait for each other."""
        current = self._current()
        if current is not None:
            yield current
            return
        with self._begin(exclusive) as tx:
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None

    def _current(self) -> Transaction | None:
        current: Transaction | None = getattr(self._local, "tx", None)
        return current

    @contextmanager
    def _statement(self) -> Iterator[Transaction]:
        current = self._current()
        if current is not None:
            yield current
        else:
            with self._autocommit() as tx:
                yield tx

    def execute(self, statement: str, params: Params = ()) -> int:
        with self._statement() as tx:
            return tx.execute(statement, params)

    def fetchall(self, statement: str, params: Params = ()) -> list[Row]:
        with self._statement() as tx:
            return tx.fetchall(statement, params)

    def fetchone(self, statement: str, params: Params = ()) -> Row | None:
        with self._statement() as tx:
            return tx.fetchone(statement, params)

    def insert(self, statement: str, params: Params = ()) -> int:
        with self._statement() as tx:
            return tx.insert(statement, params)

    @abstractmethod
    def _begin(self, exclusive: bool = True) -> AbstractContextManager[Transaction]:
        """A write transaction (exclusive, as SQLite's BEGIN IMMEDIATE, unless `exclusive` is False on a
        backend whose row locks suffice)."""

    @abstractmethod
    def _autocommit(self) -> AbstractContextManager[Transaction]:
        """Statements that each commit on their own."""

    @abstractmethod
    def _migrating(self) -> AbstractContextManager[Transaction]:
        """The transaction migrations run in (one migrator at a time)."""

    @abstractmethod
    def close(self) -> None: ...

    # --- migrations

    @abstractmethod
    def _version(self, tx: Transaction) -> tuple[int, str]:
        """The database's schema version (0: none), and a note on where it was read (may be empty)."""

    @abstractmethod
    def _prepare(self, tx: Transaction) -> None:
        """Before the version is read and migrations applied: the bookkeeping table (SQLite: the version
        of a file from before migrations were numbered, recorded)."""

    @abstractmethod
    def _finish(self, tx: Transaction, version: int) -> None:
        """After the pending migrations were applied (SQLite: PRAGMA user_version)."""

    def status(self) -> SchemaStatus:
        """The schema version and the pending migrations, read without writing anything."""
        with self._boundary("cannot read the schema version of"), self._autocommit() as tx:
            version, note = self._version(tx)
        _check_version(self.location, version)
        return SchemaStatus(self.dialect, self.location, version, _pending(version), note=note)

    def migrate(self) -> list[sql.Migration]:
        """Apply the pending migrations, all in one transaction; those applied (none: up to date)."""
        with self._boundary("cannot migrate"), self._migrating() as tx:
            self._prepare(tx)
            version, _ = self._version(tx)
            _check_version(self.location, version)
            pending = _pending(version)
            for migration in pending:
                for statement in migration.statements(self.dialect):
                    tx.execute(statement)
                tx.execute(
                    self.queries.record_migration, (migration.version, migration.description, time.time())
                )
            self._finish(tx, max([version, *(m.version for m in pending)]))
        return list(pending)

    @contextmanager
    def _boundary(self, what: str) -> Iterator[None]:
        """Any failure below as one StateError line (a StateError passes as it is)."""
        try:
            yield
        except StateError:
            raise
        except Exception as exc:
            raise StateError(one_line(f"{what} {self.location}: {exc}", self.url.secrets)) from exc


def _execute_waiting(db: sqlite3.Connection, statement: str, deadline: float) -> None:
    """Run `statement`, retrying while the database is busy until `deadline`.

    Switching a new file to WAL needs an exclusive lock, and when several connections try at once (relay
    workers starting together) SQLite answers all but one SQLITE_BUSY at once instead of calling the busy
    handler, since each holds the shared lock the others wait for: the connection's `timeout` does not
    apply.
    """
    while True:
        try:
            db.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


class SqliteBackend(Backend):
    def __init__(self, url: DbUrl) -> None:
        super().__init__(url)
        try:
            self.db = sqlite3.connect(url.target, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state file {url.location}: {exc}") from exc
        try:
            for pragma in sql.SQLITE_PRAGMAS:
                _execute_waiting(self.db, pragma, time.monotonic() + SQLITE_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            self.db.close()
            raise StateError(f"cannot open the state file {url.location}: {exc}") from exc
        self._tx = _SqliteTransaction(self.db)

    @contextmanager
    def _begin(self, exclusive: bool = True) -> Iterator[Transaction]:
        self.db.execute("BEGIN IMMEDIATE")  # one writer at a time in any case
        try:
            yield self._tx
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def _autocommit(self) -> Iterator[Transaction]:
        yield self._tx

    def _migrating(self) -> AbstractContextManager[Transaction]:
        return self._begin()

    def close(self) -> None:
        self._run_closers()
        self.db.close()

    def _version(self, tx: Transaction) -> tuple[int, str]:
        tables = {name for (name,) in tx.fetchall(sql.SQLITE_TABLES)}
        user_version = int((tx.fetchone(sql.SQLITE_USER_VERSION) or (0,))[0])
        recorded = 0
        if "schema_migrations" in tables:
            recorded = max((int(r[0]) for r in tx.fetchall(self.queries.applied_migrations)), default=0)
        version = max(recorded, user_version if "requests" in tables else 0)
        if "requests" in tables and version < sql.FIRST_VERSION:
            raise StateError(
                f"{self.location} was written by an older relay (schema {version}, this relay needs "
                f"{SCHEMA_VERSION}): let its transactions settle, then start with a fresh --db"
            )
        if version and recorded < version:
            return version, "read from PRAGMA user_version: recorded in schema_migrations by the next migrate"
        return version, ""

    def _prepare(self, tx: Transaction) -> None:
        """A file from before migrations were numbered has the schema its user_version says: record it."""
        version, note = self._version(tx)
        tx.execute(sql.SQLITE_MIGRATIONS_TABLE)
        if note:
            _check_version(self.location, version)
            recorded = {int(r[0]) for r in tx.fetchall(self.queries.applied_migrations)}
            for migration in sql.MIGRATIONS:
                if migration.version <= version and migration.version not in recorded:
                    tx.execute(
                        self.queries.record_migration,
                        (migration.version, f"{migration.description} (adopted)", time.time()),
                    )

    def _finish(self, tx: Transaction, version: int) -> None:
        tx.execute(sql.SQLITE_SET_USER_VERSION.format(version=version))


def open_backend(value: str | os.PathLike[str] | DbUrl) -> Backend:
    """Connect to the database `value` names (see parse_db_url); nothing is migrated yet."""
    url = value if isinstance(value, DbUrl) else parse_db_url(value)
    if url.dialect == sql.SQLITE:
        return SqliteBackend(url)
    from .storage_postgres import PostgresBackend  # noqa: PLC0415 - psycopg is loaded only when used

    return PostgresBackend(url)


def inspect(value: str | os.PathLike[str] | DbUrl) -> SchemaStatus:
    """The schema status of the database `value` names, without creating or changing anything."""
    url = value if isinstance(value, DbUrl) else parse_db_url(value)
    if url.dialect == sql.SQLITE and not Path(url.target).exists():
        return SchemaStatus(url.dialect, url.location, 0, _pending(0), exists=False)
    backend = open_backend(url)
    try:
        return backend.status()
    finally:
        backend.close()
