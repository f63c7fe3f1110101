"""relay/enclave_health.py: the per-enclave circuit breaker, and the contract's view of receipt signers."""

from __future__ import annotations

import pytest

from relay.enclave_health import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, LiveSigners

from .chain_fixtures import Chain


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_backs_off() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=1.0, max_cooldown_s=4.0, clock=clock)
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.success()  # consecutive failures only
    for _ in range(3):
        breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 1.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # one trial call
    assert not breaker.allow()  # and only one while it is out
    breaker.failure()  # the trial failed: open again, for twice as long
    clock.now += 1.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()
    breaker.failure()
    assert breaker.open_until - clock.now == 4.0  # capped at max_cooldown_s
    clock.now += 4.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_trial_that_never_reports_back_does_not_keep_the_breaker_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()  # the trial goes out, and its caller never says how it went
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()  # another trial, not a breaker stuck open


def test_live_signers_asks_the_contract_and_caches(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    live = LiveSigners(chain.contract, ttl_s=30.0, clock=clock)
    assert live.why_not(chain.enclave) is None
    assert live.why_not("0x" + "11" * 20) == "UnknownEnclave"
    original = chain.contract.functions.requireLiveEnclave
    calls: list[tuple[object, ...]] = []

    def counted(*args: object) -> object:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(chain.contract.functions, "requireLiveEnclave", counted)
    assert live.why_not(chain.enclave.lower()) is None  # cached, whatever the case
    assert calls == []
    clock.now += 31
    assert live.why_not(chain.enclave) is None
    assert len(calls) == 1
