"""A throwaway PostgreSQL server (tests and bench runs of the relay's PostgreSQL backend): Debian's server
binaries, `initdb` into a temporary folder, `pg_ctl start` on a free loopback port, fresh databases on demand.
tests/pg_server.py wraps it in a pytest fixture; bench/chaos_workers.py and bench/bench_relay.py use it as is.

The cluster trusts every loopback connection except those of one password-authenticated role (PASSWORD_ROLE,
scram-sha-256), so that a wrong password can be tested. PostgreSQL refuses to run as root: as root, initdb
and pg_ctl run as Debian's `postgres` system user (runuser), in a folder chown'ed to it. The binaries come
from Debian's `postgresql` package, which `make setup` installs; without them the fixture fails."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from verinfer.processes import free_port


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries (or, as root, its system user) are not installed."""


BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
PASSWORD_ROLE = "relay_pw"
PASSWORD = "s3cret-Pg-pw-7f1c"  # distinctive: a test looks for it in everything the CLI prints
START_TIMEOUT_S = 60


def find_binaries() -> Path | None:
    """The bin folder of the highest installed PostgreSQL major version with initdb, pg_ctl and postgres."""
    found = []
    for folder in Path("/").glob(BIN_GLOB.lstrip("/")):
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            version = re.fullmatch(r"\d+", folder.parent.name)
            found.append((int(version.group()) if version else -1, folder))
    return max(found)[1] if found else None


@dataclass
class PostgresServer:
    """A cluster in `folder` (data/, the server's log and socket), served on 127.0.0.1:`port`."""

    bin: Path
    folder: Path
    port: int
    host: str = "127.0.0.1"
    running: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> None:
        """pg_ctl start, waiting until the server accepts connections (its log's tail on failure)."""
        options = " ".join(
            (
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.folder}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=300 -c shared_buffers=32MB",
            )
        )
        log = self.folder / "server.log"
        try:
            _run(
                [str(self.bin / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data),
                 "-l", str(log), "-o", options],
                "pg_ctl start",
            )  # fmt: skip
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\n{tail}") from exc
        self.running = True

    def stop(self) -> None:
        if self.running:
            _run([str(self.bin / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data)], "pg_ctl stop")
            self.running = False

    def url(self, database: str = "postgres", *, user: str = SUPERUSER, password: str | None = None) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{database}"

    def admin(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple]:
        """Run one statement as the superuser on the `postgres` database (autocommit)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, owner: str = SUPERUSER) -> str:
        """A new, empty database; its name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.admin(f'CREATE DATABASE "{name}" OWNER "{owner}" STRATEGY FILE_COPY')
        return name

    def database_bytes(self, database: str) -> bytes:
        """Everything the server holds on disk for `database` (its tables, after a CHECKPOINT) and the
        write-ahead log (shared by every database of the cluster)."""
        self.admin("CHECKPOINT")
        [(oid,)] = self.admin("SELECT oid FROM pg_database WHERE datname = %s", (database,))
        files = sorted((self.data / "base" / str(oid)).iterdir()) + sorted((self.data / "pg_wal").iterdir())
        return b"".join(path.read_bytes() for path in files if path.is_file())


def _as_postgres(command: list[str]) -> list[str]:
    """`command` as the `postgres` system user when we are root (the server refuses to run as root)."""
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(
        _as_postgres(command), capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}")


def _initdb(server: PostgresServer) -> None:
    _run(
        [str(server.bin / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
         "--auth-local=trust", "--auth-host=trust", "--no-sync"],
        "initdb",
    )  # fmt: skip
    # The first matching line wins: PASSWORD_ROLE must give its password, everyone else is trusted.
    (server.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 trust\n"
    )


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server; stopped (`pg_ctl stop -m fast`) and its folder removed at the end, failure or not."""
    binaries = find_binaries()
    if binaries is None:
        raise PostgresMissing(
            f"PostgreSQL's server binaries are missing ({BIN_GLOB}/initdb, pg_ctl, postgres): "
            "run `make setup`, which installs Debian's postgresql package"
        )
    try:
        account = pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None
    except KeyError:
        raise PostgresMissing(
            f"running as root, the PostgreSQL server needs the `{SUPERUSER}` system user, which Debian's "
            "postgresql package creates: run `make setup`"
        ) from None
    folder = Path(tempfile.mkdtemp(prefix="verinfer-pg-"))
    server = PostgresServer(binaries, folder, free_port())
    try:
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
        _initdb(server)
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        server.admin(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
