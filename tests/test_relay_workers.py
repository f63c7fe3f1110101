"""Many relay workers on one PostgreSQL database: claims with leases, take-overs, the leader's advisory lock.

The unit tests use two state handles on one real database as two workers; the last test is a small chaos
run of bench/chaos_workers.py (3 `verinfer relay run` processes, SIGKILLs, the leader among them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos_workers import WorkersConfig, report, run_workers_chaos
from relay.errors import LostClaim
from relay.state import RelayState, RequestEvent, RequestStatus, TxStatus
from relay.workers import Leadership

from .pg_server import PostgresServer

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20


def event(index: int) -> RequestEvent:
    return RequestEvent(
        id=f"0x{index:064x}",
        block_number=index,
        model_hash="0xm",
        input=b"\x01",
        input_hash="0xh",
        deadline=10**12,
        callback_gas=100_000,
        fee=10**15,
    )


@pytest.fixture
def two_workers(postgres_server: PostgresServer) -> Iterator[tuple[RelayState, RelayState]]:
    url = postgres_server.url(postgres_server.create_database())
    first, second = RelayState(url), RelayState(url)
    with first.transaction() as db:
        for index in range(1, 7):
            first.upsert_request(db, event(index))
    yield first, second
    first.close()
    second.close()


def test_a_claimed_request_is_not_claimable_by_another_worker(
    two_workers: tuple[RelayState, RelayState],
) -> None:
    first, second = two_workers
    now = time.time()
    mine = first.claim(A, now=now, lease_s=30, limit=4)
    assert [c.row.id for c in mine] == [event(i).id for i in range(1, 5)]
    assert all(c.fresh and not c.taken_over for c in mine)
    theirs = second.claim(B, now=now, lease_s=30, limit=10)
    assert [c.row.id for c in theirs] == [event(5).id, event(6).id]  # the other two only
    later = second.claim(B, now=now + 29, lease_s=30, limit=10)  # A's leases still run: its own two only
    assert [(c.row.id, c.fresh) for c in later] == [(event(5).id, False), (event(6).id, False)]
    again = first.claim(A, now=now + 1, lease_s=30, limit=10)  # its own: kept (renewed), not fresh
    assert [c.row.id for c in again] == [event(i).id for i in range(1, 5)]
    assert not any(c.fresh for c in again)


def test_skip_locked_passes_over_rows_being_claimed(two_workers: tuple[RelayState, RelayState]) -> None:
    first, second = two_workers
    now = time.time()
    with first.backend.transaction(exclusive=False) as db:  # worker A is claiming the first two right now
        locked = db.fetchall(first.q.requests_claimable, (RequestStatus.PENDING, now, "-", A, now, 2))
        assert [r[0] for r in locked] == [event(1).id, event(2).id]
        started = time.monotonic()
        theirs = second.claim(B, now=now, lease_s=30, limit=2)
        assert time.monotonic() - started < 2  # not waiting for A's transaction
    assert [c.row.id for c in theirs] == [event(3).id, event(4).id]


def test_concurrent_claims_never_overlap(two_workers: tuple[RelayState, RelayState]) -> None:
    first, second = two_workers
    got: dict[str, list[str]] = {A: [], B: []}
    barrier = threading.Barrier(2)

    def worker(state: RelayState, name: str) -> None:
        barrier.wait()  # both claim at the same instant
        got[name] += [c.row.id for c in state.claim(name, now=time.time(), lease_s=60, limit=3)]

    threads = [threading.Thread(target=worker, args=args) for args in ((first, A), (second, B))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(got[A]) & set(got[B])
    assert set(got[A]) | set(got[B]) == {event(i).id for i in range(1, 7)}


def test_an_expired_lease_is_taken_over_and_the_old_holder_sends_nothing(
    two_workers: tuple[RelayState, RelayState],
) -> None:
    first, second = two_workers
    now = time.time()
    [claim] = first.claim(A, now=now, lease_s=5, limit=1)
    request_id = claim.row.id
    assert [c.row.id for c in second.claim(B, now=now + 4, lease_s=5, limit=1)] == [event(2).id]
    later = second.claim(B, now=now + 6, lease_s=5, limit=1)  # A's lease ran out: B takes request 1 over
    assert [(c.row.id, c.previous, c.taken_over) for c in later] == [(request_id, A, True)]
    own = first.txs.for_sender(A)
    with pytest.raises(LostClaim):  # A, slow, comes back with a receipt: no transaction is recorded
        own.create(
            kind="fulfil", ref=request_id, guard="0xh", nonce=0, to_address="0xto", data=b"", value=0,
            gas=1, check=lambda db: first.hold(db, request_id, A, now=time.time(), lease_s=5),
        )  # fmt: skip
    assert own.live() == [] and first.txs.latest_for("fulfil", request_id) is None
    theirs = second.txs.for_sender(B).create(
        kind="fulfil", ref=request_id, guard="0xh", nonce=0, to_address="0xto", data=b"", value=0, gas=1,
        check=lambda db: second.hold(db, request_id, B, now=time.time(), lease_s=5),
    )  # fmt: skip
    assert theirs.sender == B
    # A worker's status writes do not override the holder's either.
    assert not first.set_status_owned(request_id, A, RequestStatus.FAILED, "too late")
    assert first.request(request_id).status == RequestStatus.PENDING  # type: ignore[union-attr]


def test_leases_are_renewed_and_released(two_workers: tuple[RelayState, RelayState]) -> None:
    first, second = two_workers
    now = time.time()
    first.claim(A, now=now, lease_s=5, limit=2)
    assert first.renew(A, now=now + 4, lease_s=5) == 2  # now held until now + 9
    assert second.claim(B, now=now + 6, lease_s=5, limit=2)[0].row.id == event(3).id
    assert first.release(A) == 2
    taken = second.claim(B, now=now + 6, lease_s=5, limit=10)
    assert {c.row.id for c in taken} == {event(i).id for i in range(1, 7)}
    assert {c.previous for c in taken if c.row.id in (event(1).id, event(2).id)} == {None}


def test_each_worker_manages_its_own_nonces(two_workers: tuple[RelayState, RelayState]) -> None:
    first, second = two_workers
    mine, theirs = first.txs.for_sender(A), second.txs.for_sender(B)
    for store in (mine, theirs):
        store.create(kind="k", ref="r", guard="", nonce=5, to_address="0x", data=b"", value=0, gas=1)
    assert mine.held_nonces() == theirs.held_nonces() == {5}
    assert [t.sender for t in mine.live()] == [A] and [t.sender for t in theirs.live()] == [B]
    assert first.txs.senders() == {A, B}
    row = theirs.live()[0]
    assert first.txs.drop_if(row.id, (TxStatus.QUEUED,), "taken over")  # B's never signed: A drops it
    assert theirs.live() == [] and not first.txs.drop_if(row.id, (TxStatus.QUEUED,), "again")


def test_the_leader_lock_is_exclusive_and_passes_on(two_workers: tuple[RelayState, RelayState]) -> None:
    first, second = two_workers
    leader, other = Leadership(first, A), Leadership(second, B)
    assert leader.check() and leader.check()  # and stays so
    assert not other.check() and not other.check()
    leader.close()  # a leader that stops gives the lock back at once, for the next check to take
    assert other.check()
    assert not leader.check()
    other.close()


def test_a_dead_leaders_lock_passes_on_when_the_server_drops_its_connection(
    two_workers: tuple[RelayState, RelayState],
) -> None:
    first, second = two_workers
    leader, other = Leadership(first, A), Leadership(second, B)
    assert leader.check()
    leader._conn.close()  # the leader died: no unlock, only its connection ends
    deadline = time.monotonic() + 10
    while not other.check():
        assert time.monotonic() < deadline, "the lock of a dead leader never passed on"
        time.sleep(0.05)
    other.close()


def test_on_sqlite_the_one_worker_always_leads_and_claims(tmp_path: Path) -> None:
    with RelayState(tmp_path / "relay.sqlite3") as state:
        with state.transaction() as db:
            state.upsert_request(db, event(1))
        assert Leadership(state, A).check()
        assert [c.row.id for c in state.claim(A, now=time.time(), lease_s=1, limit=5)] == [event(1).id]
        assert [c.fresh for c in state.claim(A, now=time.time() + 5, lease_s=1, limit=5)] == [False]


SMALL = WorkersConfig(workers=3, requests=30, kills=10, rate=2.0, min_gap_s=0.5, max_gap_s=2.0, seed=7)


def test_three_workers_under_sigkills_serve_every_request_once(tmp_path: Path) -> None:
    result = run_workers_chaos(SMALL, tmp_path, say=print)
    text = report(result)
    print(text)
    assert result.failures() == {
        "requests lost": 0,
        "requests fulfilled twice": 0,
        "relay transactions reverted": 0,
        "nonces stuck": 0,
        "fees paid to a non-relay address": 0,
        "receipt batches not anchored exactly once": 0,
    }, text
    assert result.ok, text
    assert result.figures["SIGKILLs"] >= SMALL.kills, text
    assert result.figures["leader SIGKILLs"] >= 1, text
    assert result.verdict.fulfilled == result.verdict.requests >= SMALL.requests, text
