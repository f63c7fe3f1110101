"""The relay's fee policy as numbers: what it serves, and the highest price it will pay for each request."""

from __future__ import annotations

import pytest

from relay.policy import FULFIL_OVERHEAD_GAS, GWEI, FeePolicy


def test_refuse_below_the_minimum_fee_and_above_the_callback_gas() -> None:
    policy = FeePolicy(min_fee_per_gas=GWEI, max_callback_gas=500_000)
    assert policy.refuse(fee=GWEI * (200_000 + FULFIL_OVERHEAD_GAS), callback_gas=200_000) is None
    assert "below the minimum" in (policy.refuse(fee=0, callback_gas=0) or "")
    assert "callback gas" in (policy.refuse(fee=10**18, callback_gas=600_000) or "")


def test_price_ceiling_is_the_break_even_price_under_the_cap() -> None:
    policy = FeePolicy(min_fee_per_gas=GWEI, max_gas_price=100 * GWEI)
    gas = 300_000 + FULFIL_OVERHEAD_GAS
    assert policy.price_ceiling(fee=5 * GWEI * gas, callback_gas=300_000) == 5 * GWEI
    assert policy.price_ceiling(fee=10**18, callback_gas=300_000) == 100 * GWEI  # the cap binds
    assert policy.unprofitable_at(5 * GWEI, fee=5 * GWEI * gas, callback_gas=300_000) is None
    waiting = policy.unprofitable_at(6 * GWEI, fee=5 * GWEI * gas, callback_gas=300_000)
    assert waiting is not None and "break-even" in waiting
    assert "above the cap" in (policy.unprofitable_at(101 * GWEI, fee=10**18, callback_gas=0) or "")


def test_an_operator_serving_for_free_pays_up_to_the_cap() -> None:
    free = FeePolicy(min_fee_per_gas=0, max_gas_price=50 * GWEI)
    assert free.price_ceiling(fee=0, callback_gas=100_000) == 50 * GWEI
    assert free.unprofitable_at(50 * GWEI, fee=0, callback_gas=100_000) is None


def test_bump_beats_the_replacement_rule() -> None:
    policy = FeePolicy(bump_percent=12.5)
    assert policy.bumped(8 * GWEI) == 9 * GWEI
    assert policy.bumped(1) == 2  # always at least one wei more


@pytest.mark.parametrize("bad", [{"bump_percent": 5.0}, {"max_gas_price": 0}, {"stuck_after_s": 0.0}])
def test_nonsensical_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FeePolicy(**bad)  # type: ignore[arg-type]
