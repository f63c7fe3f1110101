"""Who may read receipt batches, and how often.

A batch reveals every user's receipts (request ids, hashes, timestamps) and costs the enclave a Merkle tree
and a signature, so it is served only to the relay: the one caller holding the bearer token whose sha256
was configured at start (the enclave never needs the token itself, so nothing secret is in its command
line or image), and at a bounded rate.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from protocol.errors import RequestError

DEFAULT_RATE_PER_S = 2.0
DEFAULT_BURST = 10


class BatchAccess:
    def __init__(
        self,
        token_sha256: bytes | None,
        *,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_sha256 is not None and len(token_sha256) != 32:
            raise ValueError("the batch token digest must be 32 bytes (sha256)")
        self.token_sha256 = token_sha256
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    @property
    def enabled(self) -> bool:
        return self.token_sha256 is not None

    def check(self, authorization: str | None) -> None:
        """Raise the refusal for this caller, or take one unit of the rate budget."""
        if self.token_sha256 is None:
            raise RequestError(
                403, "batches_disabled", "receipt batches are served only to a relay configured at start"
            )
        scheme, _, token = (authorization or "").partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self.token_sha256):
            raise RequestError(
                401,
                "unauthorized",
                "receipt batches need the relay's bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="verinfer-receipts"'},
            )
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens < 1.0:
            wait = (1.0 - self.tokens) / self.rate_per_s
            raise RequestError(
                429,
                "rate_limited",
                f"at most {self.rate_per_s:g} receipt batches per second",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        self.tokens -= 1.0
