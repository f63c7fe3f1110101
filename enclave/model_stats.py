"""Per-model inference statistics in the shape of KServe V2's statistics extension (Triton's model_stats).

Counters are cumulative since start and count every inference of a model, on /infer and on V2 alike.
What each one measures here (docs/PROTOCOL.md, "Statistics"):
    success / fail      requests for the model answered / refused, and their whole handling time (ns)
    queue               time a request waited for its batch to run (0 for a model run unbatched)
    compute_input       parsing and validating the request's tensors
    compute_infer       the onnxruntime run of the request's batch, counted once for every request in it
    compute_output      encoding the answer (JSON or binary); hashing and signing count in success only
    execution_count     onnxruntime runs; batch_stats has them by batch size (requests per run)
    inference_count     inferences: rows of the batch dimension where max_batch_size > 0, else requests

Written from the event loop (inference routes, the dynamic batcher); a lock keeps a reader on another thread
(or a future worker thread) from seeing half an update.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

STAGES = (
    *("success", "fail", "queue"),
    *("compute_input", "compute_infer", "compute_output"),
    *("cache_hit", "cache_miss"),
)
# Each stage is two counters, [count, ns], at these offsets of a model's flat list: plain list arithmetic
# keeps recording a request near a microsecond, a hundredth of a signed inference.
_SUCCESS, _FAIL, _QUEUE, _INPUT, _INFER, _OUTPUT = (2 * STAGES.index(s) for s in STAGES[:6])


@dataclass(slots=True)
class _Model:
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    counters: list[int] = field(default_factory=lambda: [0] * (2 * len(STAGES)))
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch size -> compute_infer [count, ns]


class ModelStats:
    """Counters for a fixed set of models (the attested manifest's): names outside it are ignored."""

    def __init__(self, models: dict[str, str]) -> None:
        """`models`: name -> version, in the order stats list them."""
        self._models = {name: _Model(version) for name, version in models.items()}
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def record_request(
        self,
        name: str,
        *,
        ok: bool,
        total_ns: int,
        input_ns: int = 0,
        output_ns: int = 0,
        inferences: int = 1,
        queue_ns: int | None = None,
    ) -> None:
        """One request for `name` answered (`ok`) or refused; a success also counts its stages, and its
        queue time when given (else record_queue counts it, from the dynamic batcher)."""
        model = self._models.get(name)
        if model is None:
            return
        with self._lock:
            c = model.counters
            if not ok:
                c[_FAIL] += 1
                c[_FAIL + 1] += total_ns
                return
            c[_SUCCESS] += 1
            c[_SUCCESS + 1] += total_ns
            c[_INPUT] += 1
            c[_INPUT + 1] += input_ns
            c[_OUTPUT] += 1
            c[_OUTPUT + 1] += output_ns
            if queue_ns is not None:
                c[_QUEUE] += 1
                c[_QUEUE + 1] += queue_ns
            model.inference_count += inferences
            model.last_inference_ms = time.time_ns() // 1_000_000

    def record_queue(self, name: str, queue_ns: int) -> None:
        """How long one request waited for its batch to start."""
        model = self._models.get(name)
        if model is None:
            return
        with self._lock:
            model.counters[_QUEUE] += 1
            model.counters[_QUEUE + 1] += queue_ns

    def record_execution(self, name: str, batch_size: int, compute_ns: int) -> None:
        """One onnxruntime run of `batch_size` requests; each of them spent `compute_ns` in it."""
        model = self._models.get(name)
        if model is None or batch_size < 1:
            return
        with self._lock:
            model.execution_count += 1
            model.counters[_INFER] += batch_size
            model.counters[_INFER + 1] += compute_ns * batch_size
            batch = model.batches.get(batch_size)
            if batch is None:
                batch = model.batches[batch_size] = [0, 0]
            batch[0] += 1
            batch[1] += compute_ns

    def model_stats(self, name: str | None = None) -> list[dict[str, Any]]:
        """Triton's `model_stats` list: every model, or just `name` (which must be known)."""
        names = list(self._models) if name is None else [name]
        with self._lock:
            return [self._body(n, self._models[n]) for n in names]

    @staticmethod
    def _body(name: str, model: _Model) -> dict[str, Any]:
        c = model.counters
        return {
            "name": name,
            "version": model.version,
            "last_inference": model.last_inference_ms,
            "inference_count": model.inference_count,
            "execution_count": model.execution_count,
            "inference_stats": {
                stage: {"count": c[2 * i], "ns": c[2 * i + 1]} for i, stage in enumerate(STAGES)
            },
            "response_stats": {},
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": count, "ns": ns}}
                for size, (count, ns) in sorted(model.batches.items())
            ],
            "memory_usage": [],
        }
