"""Many relay workers on one database: leader election and lease renewal (the claims are relay.state's).

Any number of `verinfer relay run --db postgresql://...` processes, each with its own key, share one database
and one contract:

- **Work is claimed with leases.** A worker claims pending (due) and submitted requests with
  `SELECT ... FOR UPDATE SKIP LOCKED` (relay.state.RelayState.claim): `claimed_by` is its relay address,
  `lease_until` a time `lease_s` ahead. `Heartbeat` renews every lease the worker holds, every lease_s / 3,
  from a thread of its own, so a worker busy with a slow enclave keeps its requests; a worker that dies
  stops renewing, and once its leases run out another worker's claim takes its requests over.
- **Leadership.** What must run once per fleet (chain scanning into the requests table, reorg handling,
  receipt batch anchoring) runs on the leader only: the worker holding a PostgreSQL session-level advisory
  lock (`pg_try_advisory_lock`) on a connection of its own. When the leader dies the server closes that
  connection, the lock is free, and the next worker to try (every poll) becomes the leader. On SQLite the
  one worker is always the leader.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from . import sql
from .state import RelayState

log = logging.getLogger("verinfer.relay.workers")
DEFAULT_LEASE_S = 10.0


class Leadership:
    """Whether this worker leads the fleet: `check()` before each step's leader-only work."""

    def __init__(self, state: RelayState, worker: str) -> None:
        self.state = state
        self.worker = worker
        self.always = state.backend.dialect == sql.SQLITE
        self.leader = self.always
        self._conn: Any = None
        state.backend.on_close(self.close)

    def check(self) -> bool:
        """Still the leader (its connection answers), or just became it; False on any database problem."""
        if self.always:
            return True
        import psycopg  # noqa: PLC0415 - loaded with the PostgreSQL backend only

        was = self.leader
        try:
            if self._conn is None or self._conn.closed:
                self.leader = False
                self._conn = psycopg.connect(
                    self.state.backend.url.target,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"verinfer-relay-leader {self.worker}"[:63],
                )
                for setting in sql.POSTGRESQL_LEADER_KEEPALIVES:
                    self._conn.execute(setting)
            if self.leader:
                self._conn.execute(sql.POSTGRESQL_ALIVE).fetchone()
            else:
                row = self._conn.execute(sql.POSTGRESQL_TRY_LEADER, (sql.LEADER_LOCK_KEY,)).fetchone()
                self.leader = bool(row and row[0])
        except psycopg.Error as exc:
            self.leader = False
            self.close()
            if was:
                log.warning("lost the leadership: its database connection failed (%s)", exc)
        if self.leader and not was:
            log.info("worker %s is the leader now (scanning, reorgs, batch anchoring)", self.worker)
        return self.leader

    def close(self) -> None:
        """Give the leadership up: unlock, so the next worker's check takes it at once, then close."""
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: closing it frees the lock too
                if self.leader:
                    self._conn.execute(sql.POSTGRESQL_GIVE_UP_LEADER, (sql.LEADER_LOCK_KEY,))
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if not self.always:
            self.leader = False


class Heartbeat:
    """Renews this worker's leases every `lease_s / 3` seconds from a daemon thread (PostgreSQL only: a
    SQLite file has one worker, whose step renews them)."""

    def __init__(self, state: RelayState, worker: str, lease_s: float) -> None:
        self.state = state
        self.worker = worker
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self.state.backend.dialect != sql.SQLITE and (self._thread is None or not self._thread.is_alive()):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.state.renew(self.worker, now=time.time(), lease_s=self.lease_s)
            except Exception as exc:  # the database is away: the step notices and waits too
                log.warning("could not renew leases: %s", exc)

    def stop(self) -> None:
        self._stop.set()
