"""A small chaos run (bench/chaos.py): real anvil, enclaves and relay processes under every fault at once.

10 SIGKILLs at random points, a 4 s RPC outage, one reorg deeper than the relays' confirmations that
re-creates requests with new inputs, one gas spike that strands a fulfil transaction, two relays competing
throughout. The four invariants must hold: nothing lost, nothing fulfilled twice, no nonce stuck, no fee
paid to anyone but a relay. docs/RELIABILITY.md has the full run (100 kills, a 30 s outage).
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos import ChaosConfig, report, run_chaos

SMALL = ChaosConfig(
    kills=10,
    requests=20,
    rate=1.0,
    outage_s=4.0,
    reorg_margin=2,
    reorg_requests=2,
    max_alive_s=3.0,
    phase_timeout_s=45.0,
    seed=11,
)


def test_small_chaos_run_keeps_the_four_invariants(tmp_path: Path) -> None:
    result = run_chaos(SMALL, tmp_path, say=print)
    text = report(result)
    print(text)
    assert result.verdict.failures() == {
        "requests lost": 0,
        "requests fulfilled twice": 0,
        "nonces stuck": 0,
        "fees paid to a non-relay address": 0,
    }, text
    assert not result.notes_failing, text
    assert result.figures["SIGKILLs in the kill phase"] == SMALL.kills, text
    assert result.figures["reorg depth (blocks)"] > SMALL.confirmations, text
    assert result.figures["fulfil transactions stranded"] >= 1, text
    assert result.verdict.fulfilled == result.verdict.requests >= SMALL.requests // 2, text
    assert all(relay.fulfilments > 0 for relay in result.verdict.relays), text
