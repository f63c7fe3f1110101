"""The session's throwaway PostgreSQL server for the relay's PostgreSQL backend (bench/pg_server.py runs it:
Debian's server binaries, `initdb` into a temporary folder, `pg_ctl start` on a free loopback port, a fresh
database for each test that asks for one). Without the binaries the fixture fails, saying what to install."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.pg_server import (
    BIN_GLOB,
    PASSWORD,
    PASSWORD_ROLE,
    SUPERUSER,
    PostgresMissing,
    PostgresServer,
    find_binaries,
    running_postgres,
)

__all__ = [
    "BIN_GLOB",
    "PASSWORD",
    "PASSWORD_ROLE",
    "SUPERUSER",
    "PostgresServer",
    "find_binaries",
    "postgres_server",
    "running_postgres",
]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started the first time a test needs it)."""
    try:
        with running_postgres() as server:
            yield server
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
