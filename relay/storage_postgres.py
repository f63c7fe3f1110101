"""The relay's PostgreSQL backend (relay.storage): psycopg 3 through a psycopg_pool.ConnectionPool.

Autocommit connections: a statement outside a transaction commits on its own, as on SQLite; a transaction
is BEGIN ... COMMIT on one pooled connection, and a write transaction first takes an advisory lock, so that
it is as exclusive as SQLite's BEGIN IMMEDIATE. Connections are checked when taken from the pool: one lost
with a server restart is replaced. Failures to connect are said in one line (StateError): connection refused,
no answer, wrong user name or password, no such database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import Enum
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from . import sql
from .errors import StateError
from .storage import Backend, DbUrl, Params, Row, Transaction, one_line

CONNECT_TIMEOUT_S = 5  # a wrong host or a filtered port fails after this, not after libpq's minutes
POOL_TIMEOUT_S = 10.0  # how long a statement waits for a connection (the server down or restarting)
POOL_MAX_SIZE = 4
# How long the pool retries (with backoff) a connection it lost before giving up; a relay's next statement
# then tries at once again. (psycopg_pool's default, 5 minutes, would let its backoff grow to a minute:
# that long a wait after the server is back.)
RECONNECT_TIMEOUT_S = 5.0


def _pg_value(value: object) -> object:
    """A parameter as PostgreSQL takes it: enums by value, and text without NUL (which PostgreSQL cannot
    store; an enclave's or a node's error text quoted in a `detail` could hold one)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class _PostgresTransaction(Transaction):
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self.conn = conn

    def _run(self, statement: str, params: Params) -> psycopg.Cursor[Row]:
        return self.conn.execute(statement, [_pg_value(p) for p in params])

    def execute(self, statement: str, params: Params = ()) -> int:
        return self._run(statement, params).rowcount

    def fetchall(self, statement: str, params: Params = ()) -> list[Row]:
        return self._run(statement, params).fetchall()

    def insert(self, statement: str, params: Params = ()) -> int:
        row = self._run(statement, params).fetchone()
        assert row is not None, "an insert statement of relay.sql returns its id"
        return int(row[0])


class PostgresBackend(Backend):
    def __init__(self, url: DbUrl) -> None:
        super().__init__(url)
        try:
            given = conninfo_to_dict(url.target)
        except Exception as exc:
            raise StateError(
                one_line(f"{url.location} is not a PostgreSQL URL libpq reads: {exc}", url.secrets)
            ) from exc
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        self._connect_timeout = given.get("connect_timeout", CONNECT_TIMEOUT_S)
        if "application_name" not in given:
            self._kwargs["application_name"] = "verinfer-relay"
        self._probe()
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url.target,
            kwargs=self._kwargs,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            open=False,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            check=ConnectionPool.check_connection,
            name="verinfer-relay",
            num_workers=1,
        )
        try:
            with self._errors():
                self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
        except BaseException:
            self._pool.close()
            raise

    def _probe(self) -> None:
        """Connect once, so that a wrong host, port, password or database name is said plainly."""
        try:
            psycopg.connect(self.url.target, **self._kwargs).close()
        except psycopg.Error as exc:
            raise StateError(
                f"cannot open the relay database {self.location}: {self._connect_problem(exc)}"
            ) from exc

    def _connect_problem(self, exc: Exception) -> str:
        """libpq's message, said for an operator: what is wrong, the server's words, what to check."""
        said = one_line(str(exc), self.url.secrets)
        server = said.rsplit(" failed: ", 1)[-1].removeprefix("FATAL: ").strip()
        text = said.lower()
        refused = ("authentication failed", "no password supplied")
        if any(words in text for words in refused) or ("role " in text and "does not exist" in text):
            return f"wrong user name or password ({server})"
        if "database " in text and "does not exist" in text:
            return f"no such database ({server}): create it (createdb) or fix the name"
        if "no pg_hba.conf entry" in text:
            return f"the server does not let this user in from this host ({server}): see its pg_hba.conf"
        if "connection refused" in text:
            return "connection refused: is PostgreSQL running on that host, and listening on that port?"
        if "timeout expired" in text:
            return f"no answer within {self._connect_timeout} s: is the host right, and its port open?"
        if "could not translate host name" in text or "failed to resolve host" in text:
            return f"unknown host ({server})"
        return said

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A connection lost or not to be had (server down or restarting) as a StateError: the relay's loop
        waits and retries, as for an RPC outage."""
        try:
            yield
        except psycopg.OperationalError as exc:
            said = one_line(str(exc), self.url.secrets) or type(exc).__name__
            raise StateError(f"the relay database {self.location} is unavailable: {said}") from exc

    @contextmanager
    def _connection(self, lock: str | None, *, begin: bool = True) -> Iterator[Transaction]:
        with self._errors(), self._pool.connection() as conn:
            if not begin:
                yield _PostgresTransaction(conn)
                return
            with conn.transaction():
                if lock is not None:
                    conn.execute(lock)
                yield _PostgresTransaction(conn)

    def _begin(self, exclusive: bool = True) -> AbstractContextManager[Transaction]:
        return self._connection(sql.POSTGRESQL_WRITE_LOCK if exclusive else None)

    def _autocommit(self) -> AbstractContextManager[Transaction]:
        return self._connection(None, begin=False)

    def _migrating(self) -> AbstractContextManager[Transaction]:
        return self._connection(sql.POSTGRESQL_MIGRATION_LOCK)

    def close(self) -> None:
        self._run_closers()
        self._pool.close()

    def _version(self, tx: Transaction) -> tuple[int, str]:
        (exists,) = tx.fetchone(sql.POSTGRESQL_HAS_MIGRATIONS) or (False,)
        if not exists:
            return 0, ""
        return max((int(r[0]) for r in tx.fetchall(self.queries.applied_migrations)), default=0), ""

    def _prepare(self, tx: Transaction) -> None:
        tx.execute(sql.POSTGRESQL_MIGRATIONS_TABLE)

    def _finish(self, tx: Transaction, version: int) -> None:
        """The version is the newest row of schema_migrations: nothing more to write."""
