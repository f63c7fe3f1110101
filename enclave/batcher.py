"""Dynamic batching: concurrent requests for one model run as one onnxruntime call, each signed on its own.

Requests that reach the event loop together wait for one flush: with a window of 0 (the default) the flush
runs as soon as the loop has handled the requests that arrived in the same turn, so a lone request is never
delayed; a window W holds the first request up to W seconds for more; `max_batch` waiting requests flush at
once. A flush runs each model's requests as one call, the inputs concatenated along the first dimension,
then hashes and signs every request's own slice of the outputs, so receipts are exactly what an unbatched
run gives: inputHash over that request's inputs, outputHash over its outputs, its own request id. Where the
server counts the inference requests it has received and not answered (enclave/http_protocol.py), a flush
also runs at once when all of them are waiting, so a lone request does not wait for the next loop turn.

All of it runs on the event loop. A worker thread was measured and lost: handing each batch to it and back
costs two thread wake-ups and GIL hand-offs (about 0.15 ms a request at one connection, more than the
model run), and signing and HTTP parsing hold the GIL anyway.

A model is batched only where it is safe: every input and output has a dynamic first dimension, and at
start a probe shows that a batched run returns, bit for bit, what separate runs return (some kernels pick
another algorithm for more rows). Otherwise its requests run one by one. A batch whose joint run fails (an
input onnxruntime rejects) is rerun request by request, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocol.errors import RequestError

from .runtime import LoadedModel
from .service import EnclaveService, InferenceResult

log = logging.getLogger("verinfer.enclave")
DEFAULT_MAX_BATCH = 32
DEFAULT_WINDOW_S = 0.0
_PROBE_ROWS = (1, 3, 8)

Tensors = list[tuple[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """`max_batch` requests per call at most; a flush waits up to `window_s` for a batch to fill."""

    max_batch: int = DEFAULT_MAX_BATCH
    window_s: float = DEFAULT_WINDOW_S


DEFAULT_BATCHING = BatchPolicy()


@dataclass(slots=True)
class Job:
    model: LoadedModel
    inputs: Tensors
    request_id: bytes
    only: set[str] | None
    salt: bytes | None  # a sealed request's commitment salt (protocol/sealing.py), else None
    future: asyncio.Future[InferenceResult] | None  # None: run at once, not queued
    queued: float = field(default_factory=time.perf_counter)
    # Filled by the flush: the result or the refusal, and when its batch started to run.
    result: InferenceResult | None = None
    error: BaseException | None = None
    started: float = 0.0
    batch_size: int = 1


BatchObserver = Callable[[LoadedModel, int, float], None]  # (model, batch size, compute seconds)
JobObserver = Callable[[Job], None]


def batchable(model: LoadedModel) -> bool:
    """Every tensor's first dimension is dynamic, so requests can be stacked along it."""
    specs = (*model.entry.inputs, *model.entry.outputs)
    return all(len(spec.shape) >= 1 and spec.shape[0] == -1 for spec in specs)


def _probe_inputs(model: LoadedModel, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for spec in model.entry.inputs:
        shape = (rows, *(1 if d == -1 else d for d in spec.shape[1:]))
        if spec.dtype.numpy.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        elif spec.dtype.numpy.kind == "b":
            feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype.numpy)
    return feed


def batching_is_exact(model: LoadedModel) -> bool:
    """True when stacked runs give bit-identical rows to separate runs, on random probe inputs."""
    if not batchable(model):
        return False
    rng = np.random.default_rng(0)
    try:
        for rows in _PROBE_ROWS:
            feed = _probe_inputs(model, rows, rng)
            stacked = model.run(feed)
            for row in range(rows):
                alone = model.run({name: array[row : row + 1] for name, array in feed.items()})
                for (_, joint), (_, single) in zip(stacked, alone, strict=True):
                    if joint.shape[0] != rows or joint[row : row + 1].tobytes() != single.tobytes():
                        return False
    except RequestError:
        return False
    return True


class Batcher:
    """Collects the requests that reach the event loop together and runs each model's as one call."""

    def __init__(
        self,
        service: EnclaveService,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        window_s: float = DEFAULT_WINDOW_S,
        on_batch: BatchObserver | None = None,
        on_job: JobObserver | None = None,
        arrivals: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch must be >= 1 and the window >= 0")
        self.service = service
        # Inference requests received and not yet answered (enclave/http_protocol.py), when known.
        self.arrivals = arrivals
        self.max_batch = max_batch
        self.window_s = window_s
        self.on_batch = on_batch
        self.on_job = on_job
        self.exact = {name: batching_is_exact(m) for name, m in service.runtime.models.items()}
        for name, exact in self.exact.items():
            if not exact:
                log.info("model %s runs unbatched (a fixed first dimension, or batching is inexact)", name)
        self._pending: list[Job] = []
        self._flush_handle: asyncio.Handle | None = None

    def batch_limit(self, name: str) -> int:
        """The most requests of `name` one call runs (1: unbatched)."""
        return self.max_batch if self.exact.get(name, False) else 1

    async def infer(
        self,
        model: LoadedModel,
        inputs: Tensors,
        request_id: bytes,
        only: set[str] | None,
        salt: bytes | None = None,
    ) -> InferenceResult:
        alone = (
            not self._pending and self.window_s == 0 and self.arrivals is not None and self.arrivals() <= 1
        )
        if alone:  # the only inference request in the process: no batch to form, no future to wait on
            return self._run_now(Job(model, inputs, request_id, only, salt, None))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        self._pending.append(Job(model, inputs, request_id, only, salt, future))
        pending = len(self._pending)
        everyone = self.arrivals is not None and self.window_s == 0 and self.arrivals() <= pending
        if pending >= self.max_batch or everyone:  # `everyone`: nobody else can join this turn
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = (
                loop.call_soon(self.flush)
                if self.window_s == 0
                else loop.call_later(self.window_s, self.flush)
            )
        return await future

    def flush(self) -> None:
        """Run everything pending: each model's requests as one call, then sign, record and answer each."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        jobs, self._pending = self._pending, []
        for group in _by_model(jobs):
            self._run_group(group)
        for job in jobs:
            self._deliver(job)

    def _run_now(self, job: Job) -> InferenceResult:
        job.started = job.queued
        self._run_alone(job)
        self._deliver(job)
        if job.result is None:
            raise job.error or RuntimeError("no result")
        return job.result

    def _run_group(self, group: list[Job]) -> None:
        model = group[0].model
        limit = self.batch_limit(model.entry.name)
        for start in range(0, len(group), limit):
            chunk = group[start : start + limit]
            if len(chunk) > 1 and self._run_stacked(model, chunk):
                continue
            for job in chunk:
                self._run_alone(job)

    def _run_stacked(self, model: LoadedModel, jobs: list[Job]) -> bool:
        named = [dict(job.inputs) for job in jobs]
        names = [spec.name for spec in model.entry.inputs]
        rows = [feed[names[0]].shape[0] for feed in named]
        if any(
            feed[name].shape[0] != count for feed, count in zip(named, rows, strict=True) for name in names
        ):
            return False  # a request whose inputs disagree on their row count cannot be stacked
        started = time.perf_counter()
        feed = {name: np.concatenate([own[name] for own in named]) for name in names}
        try:
            outputs = model.run(feed)
        except RequestError:
            return False  # rerun one by one, so only the request onnxruntime rejects fails
        total = sum(rows)
        if any(array.shape[:1] != (total,) for _, array in outputs):
            return False
        computed = time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(model, len(jobs), computed)
        offset = 0
        for job, count in zip(jobs, rows, strict=True):
            job.started, job.batch_size = started, len(jobs)
            own = [(name, array[offset : offset + count]) for name, array in outputs]
            offset += count
            self._sign(job, own)
        return True

    def _run_alone(self, job: Job) -> None:
        job.started = time.perf_counter()
        try:
            outputs = job.model.run(dict(job.inputs))
        except RequestError as error:
            job.error = error
            return
        except Exception as exc:  # surfaces as the route's counted 500
            job.error = exc
            return
        if self.on_batch is not None:
            self.on_batch(job.model, 1, time.perf_counter() - job.started)
        self._sign(job, outputs)

    def _sign(self, job: Job, outputs: Tensors) -> None:
        try:
            job.result = self.service.sign_outputs(
                job.model, job.inputs, outputs, job.request_id, job.only, salt=job.salt
            )
        except Exception as exc:  # a 422 refusal, or the route's counted 500
            job.error = exc

    def _deliver(self, job: Job) -> None:
        if job.result is not None:
            self.service.record(job.result.receipt)
        if self.on_job is not None:
            self.on_job(job)
        if job.future is None or job.future.done():  # run at once, or the client went away (still recorded)
            return
        if job.result is not None:
            job.future.set_result(job.result)
        else:
            job.future.set_exception(job.error or RuntimeError("no result"))


def _by_model(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by model, each group in arrival order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.model.entry.name, []).append(job)
    return list(groups.values())
