"""What the relay is willing to pay for: which requests it serves and how it prices its transactions.

A relay pays the gas of every `fulfill`, callback included, and is paid the request's fee. Serving a
request is worth it only when the fee covers that gas at a price the operator accepts, so a request is
served only if `fee >= min_fee_per_gas * (callbackGasLimit + FULFIL_OVERHEAD_GAS)`; one asking for more than
`max_callback_gas` is skipped whatever it pays (its transaction could not be priced under the cap anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

GWEI = 10**9
# Gas a `fulfill` costs besides the callback: calldata, the receipt check (ecrecover, EIP-712 hashing), the
# output-layout decode, storage writes and the fee payment. Measured on anvil (issue 11 contracts) from an
# EOA requester with no callback: 65,127 gas for mnist-lenet (420 bytes of calldata), 64,738 for iris-mlp.
# Rounded up for larger outputs, the call into a consumer contract and a deferred payment's storage write.
FULFIL_OVERHEAD_GAS = 100_000
# The node's replacement rule: geth wants +10% on each fee field; 12.5% leaves room for rounding.
MIN_BUMP_PERCENT = 10.0


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """The operator's economics. Prices are wei per gas (legacy `gasPrice`)."""

    min_fee_per_gas: int = 1 * GWEI
    max_callback_gas: int = 1_000_000
    max_gas_price: int = 100 * GWEI
    bump_percent: float = 12.5
    stuck_after_s: float = 30.0
    fulfil_overhead_gas: int = FULFIL_OVERHEAD_GAS

    def __post_init__(self) -> None:
        if self.min_fee_per_gas < 0 or self.max_callback_gas < 0 or self.max_gas_price <= 0:
            raise ValueError(
                "fees and gas limits must not be negative, and the gas price cap must be positive"
            )
        if self.bump_percent < MIN_BUMP_PERCENT:
            raise ValueError(f"a replacement must raise the price by at least {MIN_BUMP_PERCENT}%")
        if self.stuck_after_s <= 0:
            raise ValueError("stuck_after_s must be positive")

    def min_fee(self, callback_gas: int) -> int:
        return self.min_fee_per_gas * (callback_gas + self.fulfil_overhead_gas)

    def refuse(self, *, fee: int, callback_gas: int) -> str | None:
        """Why a request is not worth serving, or None when it is."""
        if callback_gas > self.max_callback_gas:
            return f"callback gas {callback_gas} is above the maximum {self.max_callback_gas}"
        if fee < self.min_fee(callback_gas):
            minimum = self.min_fee(callback_gas)
            return f"fee {fee} wei is below the minimum {minimum} wei for {callback_gas} callback gas"
        return None

    def price_ceiling(self, *, fee: int, callback_gas: int) -> int:
        """The highest gas price a request's fulfil may be signed or re-priced at: the cap, and below it
        the price at which the fee still pays for the gas (passing `refuse` only says it pays at
        `min_fee_per_gas`). An operator with `min_fee_per_gas = 0` serves for free, up to the cap."""
        if self.min_fee_per_gas == 0:
            return self.max_gas_price
        return min(self.max_gas_price, fee // (callback_gas + self.fulfil_overhead_gas))

    def unprofitable_at(self, price: int, *, fee: int, callback_gas: int) -> str | None:
        """Why the request should not be served at gas price `price` now (it waits), or None."""
        if price > self.max_gas_price:
            return f"gas price {price} wei is above the cap {self.max_gas_price} wei; waiting"
        ceiling = self.price_ceiling(fee=fee, callback_gas=callback_gas)
        if price <= ceiling:
            return None
        return f"gas price {price} wei is above this request's break-even {ceiling} wei; waiting"

    def bumped(self, price: int) -> int:
        """The smallest price a replacement of a transaction priced `price` may use (the node's rule)."""
        return price + max(1, -(-price * int(self.bump_percent * 1000) // 100_000))
