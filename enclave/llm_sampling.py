"""Token selection from one row of logits: greedy, temperature and nucleus (top-p) sampling.

Kept apart from the engine loop so the rules that make a generation reproducible (first-max argmax,
float64 softmax, a stable descending order, one PCG64 stream per request) live in one small place.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

# Nucleus candidates are first looked for among tokens at least this likely relative to the top one, so a
# typical step sorts a few hundred probabilities, not the vocabulary (a full stable sort costs ~5-8 ms).
_NUCLEUS_RATIOS = (1e-3, 1e-6)
# Inverse-CDF draws sum blocks of this many probabilities first, then scan one block.
_CDF_BLOCK = 1024


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. temperature 0 = greedy; top_p 1.0 = no nucleus cut."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)

    def validate(self) -> None:
        """Raise ValueError for settings no sampler can honour (the server maps it to a 400)."""
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


class Sampler:
    """Picks tokens for one request; owns that request's random stream so batching cannot perturb it."""

    __slots__ = ("_buffer", "_rng", "_temperature", "_top_p", "greedy")

    def __init__(self, params: SamplingParams) -> None:
        self._temperature = float(params.temperature)
        self._top_p = float(params.top_p)
        self.greedy = self._temperature == 0.0
        self._rng: np.random.Generator | None = None
        self._buffer: NDArray[np.float64] | None = None
        if not self.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(16), "little")
            self._rng = np.random.Generator(np.random.PCG64(seed))

    def pick(self, logits: NDArray[np.float32]) -> int | None:
        """The next token id, or None when the logits are not all finite (the caller fails the request)."""
        if not bool(np.isfinite(logits).all()):
            return None
        return int(np.argmax(logits)) if self.greedy else self.sample(logits)

    def sample(self, logits: NDArray[np.float32]) -> int:
        """A draw from softmax(logits / T) (float64), cut to the top_p nucleus; logits must be finite."""
        assert self._rng is not None
        probs = self._buffer
        if probs is None or probs.shape != logits.shape:
            probs = self._buffer = np.empty(logits.shape, np.float64)
        np.subtract(logits, logits.max(), out=probs)  # shifted so exp cannot overflow
        probs /= self._temperature
        np.exp(probs, out=probs)
        probs /= probs.sum()
        if self._top_p < 1.0:
            ids, kept = nucleus(probs, self._top_p)
            cdf = np.cumsum(kept)
            index = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
            return int(ids[min(index, ids.shape[0] - 1)])
        return inverse_cdf(probs, self._rng.random())


def inverse_cdf(probs: NDArray[np.float64], u: float) -> int:
    """The token whose cumulative-probability interval holds u * total, in two levels (block sums, then
    one block's running sum) because a flat cumsum over the vocabulary costs several times more."""
    vocab = probs.shape[0]
    starts = np.arange(0, vocab, _CDF_BLOCK)
    block_cdf = np.cumsum(np.add.reduceat(probs, starts))
    target = u * block_cdf[-1]
    block: int = min(int(np.searchsorted(block_cdf, target, side="right")), starts.shape[0] - 1)
    before = block_cdf[block - 1] if block else 0.0
    inner = np.cumsum(probs[starts[block] : starts[block] + _CDF_BLOCK])
    index: int = min(int(np.searchsorted(inner, target - before, side="right")), inner.shape[0] - 1)
    return int(starts[block]) + index


def nucleus(probs: NDArray[np.float64], top_p: float) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """(token ids, their probabilities) of the smallest most-likely prefix whose mass reaches top_p.

    The order is descending probability, ties broken by lower token id (a stable sort of -p), and at least
    one token is always kept. Equal to sorting the whole vocabulary, but sorts only the tokens above a
    threshold: those form a prefix of the full order, so if their mass reaches top_p the nucleus is in it.
    """
    top = probs.max()
    for ratio in _NUCLEUS_RATIOS:
        order, cumulative = _descending(probs, np.flatnonzero(probs >= top * ratio))
        if cumulative[-1] >= top_p:
            break
    else:
        order, cumulative = _descending(probs, np.arange(probs.shape[0]))
    count = min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, order.shape[0])
    return order[:count], probs[order[:count]]


def _descending(
    probs: NDArray[np.float64], candidates: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Candidates (ascending ids) by descending probability, ties by id, with their running mass."""
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    return order, np.cumsum(probs[order])
