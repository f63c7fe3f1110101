"""Which enclaves the relay may use now: a circuit breaker per enclave, and the contract's view of signers.

A relay serving through several enclaves (or several behind one address) must route around one that fails
without hammering it, and must not spend gas on a receipt the contract will refuse. So:
- `CircuitBreaker`: after `threshold` consecutive failures an enclave is skipped ("open") for a cool-down
  that doubles each time it fails again (up to `max_cooldown_s`); then one trial call is let through
  ("half-open"): success closes the breaker, failure opens it again.
- `LiveSigners`: whether the contract accepts a receipt signer now (`requireLiveEnclave`: registered, not
  expired, its image still approved, not banned), asked once per `ttl_s` per address. A receipt from an
  enclave that is not live is never submitted: the contract would revert and the gas would be lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from web3.contract import Contract
from web3.exceptions import Web3Exception

from .chain import custom_error

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class CircuitBreaker:
    threshold: int = 3
    cooldown_s: float = 1.0
    max_cooldown_s: float = 10.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    failures: int = 0  # consecutive
    opened: int = 0  # times opened in a row (the cool-down doubles each time)
    open_until: float = 0.0
    trial_until: float = 0.0  # a half-open trial call is out until then (one that never reports expires)

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return CLOSED
        now = self.clock()
        return OPEN if now < self.open_until or now < self.trial_until else HALF_OPEN

    def allow(self) -> bool:
        """Whether to call the enclave now; a half-open breaker lets one trial call through."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN:
            self.trial_until = self.clock() + self.cooldown_s
            return True
        return False

    def success(self) -> None:
        self.failures = self.opened = 0
        self.trial_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        self.trial_until = 0.0
        if self.failures >= self.threshold:
            cooldown = min(self.max_cooldown_s, self.cooldown_s * 2**self.opened)
            self.opened += 1
            self.open_until = self.clock() + cooldown


@dataclass
class LiveSigners:
    contract: Contract
    ttl_s: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _known: dict[str, tuple[float, str | None]] = field(default_factory=dict, repr=False)

    def why_not(self, address: str) -> str | None:
        """None when the contract accepts receipts signed by `address` now; else the contract's reason
        (UnknownEnclave, EnclaveExpired, EnclaveImageRevoked, EnclaveBanned). Chain errors propagate."""
        key = address.lower()
        now = self.clock()
        cached = self._known.get(key)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        reason: str | None = None
        try:
            self.contract.functions.requireLiveEnclave(self.contract.w3.to_checksum_address(address)).call()
        except Web3Exception as exc:
            reason = custom_error(exc)
            if reason is None:
                raise
        self._known[key] = (now, reason)
        return reason

    def forget(self, address: str) -> None:
        self._known.pop(address.lower(), None)
