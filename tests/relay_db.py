"""The relay's state database in tests, on both backends.

`relay_db` is parametrised: a test that takes it runs twice, on SQLite (a file in the test's folder) and on
PostgreSQL (a fresh database on the session's server, tests/pg_server.py). `relay_dbs(name)` gives more of
them to one test (two relays, two databases). `rows` and `statuses` read what a relay wrote, from outside
it, as an operator would with sqlite3 or psql."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .pg_server import PostgresServer

BACKENDS = ["sqlite", "postgresql"]


@dataclass(frozen=True)
class RelayDb:
    url: str  # what `--db` is given
    folder: Path  # where the relay's other files go (its logs; its SQLite file)
    server: PostgresServer | None = None
    database: str | None = None  # PostgreSQL: the database's name

    def __str__(self) -> str:
        return self.url

    @property
    def backend(self) -> str:
        return "sqlite" if self.server is None else "postgresql"

    def log(self) -> Path:
        """A new log file for a relay process."""
        return self.folder / f"relay.{time.time_ns()}.log"

    def stored_bytes(self) -> bytes:
        """Everything the database holds on disk (PostgreSQL; a SQLite file is in `folder` already)."""
        if self.server is None or self.database is None:
            return b""
        return self.server.database_bytes(self.database)


def new_relay_db(backend: str, folder: Path, request: pytest.FixtureRequest) -> RelayDb:
    folder.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        return RelayDb(str(folder / "relay.sqlite3"), folder)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database = server.create_database()
    return RelayDb(server.url(database), folder, server, database)


@pytest.fixture(params=BACKENDS)
def relay_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], RelayDb]:
    """`relay_dbs(name)`: a new, empty relay database of this run's backend (files under tmp_path/name)."""
    return lambda name: new_relay_db(request.param, tmp_path / name, request)


@pytest.fixture
def relay_db(relay_dbs: Callable[[str], RelayDb]) -> RelayDb:
    """A new, empty relay database: SQLite in one run of the test, PostgreSQL in the other."""
    return relay_dbs("relay")


_connections: dict[str, Any] = {}


def rows(db: RelayDb | str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of `statement` (written with `?` marks) in the relay's database; none while the relay has
    not created its schema yet (or its SQLite file)."""
    url = str(db)
    if not url.startswith("postgresql://"):
        if not Path(url).exists():
            return []
        with closing(sqlite3.connect(url)) as file:
            try:
                return file.execute(statement, params).fetchall()
            except sqlite3.OperationalError:  # no schema yet
                return []
    import psycopg

    conn = _connections.get(url)
    if conn is None or conn.closed:
        conn = _connections[url] = psycopg.connect(url, autocommit=True, connect_timeout=5)
    try:
        return list(conn.execute(statement.replace("?", "%s"), params).fetchall())
    except psycopg.errors.UndefinedTable:  # no schema yet
        return []


def statuses(db: RelayDb | str) -> dict[str, str]:
    """Each request's status, as the relay recorded it."""
    return {str(i): str(s) for i, s in rows(db, "SELECT id, status FROM requests")}
