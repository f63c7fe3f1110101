"""A continuous-batching CPU generation loop over the converted LLM graph (onnxruntime, IOBinding).

Why our own loop: onnxruntime-genai's Engine batches continuously only with a paged-KV (PagedAttention)
graph, which exists for CUDA/WebGPU only; on CPU it falls back to a static batch (docs/BENCHMARKS.md).

Design: one engine thread owns the InferenceSession and, per layer, one K and one V buffer of shape
[max_batch, kv_heads, max_context, head] in anonymous memory without huge pages (pages are mapped only when
a position is written, so memory follows the tokens in use; numpy's own large arrays ask for 2 MB pages,
which made one short prompt commit ~94 MB per row). Active sequences sit compacted in rows 0..k-1, so kv[:k]
is a contiguous view that is bound as both past_key_values.* and present.* (GroupQueryAttention then
appends in place: past_present_share_buffer). A new request is prefilled alone on row k, one chunk per step
boundary (so running streams stall at most one chunk), then joins the next batched decode step (S=1,
right-padded attention_mask). A finished sequence leaves at once; the last row moves into its place
(only its used positions are copied). Rows keep their pages for the next request, and all are returned to
the OS once the engine has been idle for kv_release_after_s. IOBindings are built once per batch size and
per row, and the decode mask is max_context wide and bound once per batch size, so a decode step binds
nothing: it rewrites the input ids and the mask in place (the graph gives GroupQueryAttention each row's
length as the mask's sum; rebinding a [k, T] mask cost ~70 us a step, ~1% of a token here). When the last
request has left, the C heap is trimmed (enclave/heap.py).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from .heap import release_free_heap
from .llm_sampling import Sampler, SamplingParams

__all__ = [
    "EngineClosed",
    "EngineFull",
    "EngineStats",
    "Generation",
    "LlmEngine",
    "SamplingParams",
    "TokenSink",
]

log = logging.getLogger(__name__)

# One request is prefilled at a time, in chunks of this many tokens, one chunk per step boundary: running
# streams stall at most one chunk (not a whole 2k-token prompt), and the prefilling request pays one batched
# decode step per chunk (a 105-token prompt is one chunk). Chunked prefill is bitwise equal to a whole one.
PREFILL_CHUNK = 256


class EngineFull(Exception):
    """More requests than max_batch + queue_limit are waiting or running (the server answers 429/503)."""


class EngineClosed(RuntimeError):
    """submit() after close()."""


class TokenSink(Protocol):
    """Receives one request's output; called from the engine thread, so it must be cheap and never block."""

    def on_tokens(self, tokens: list[int]) -> None: ...

    def on_finish(self, reason: str, error: str | None) -> None: ...


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for Prometheus: gauges (queued, active) and monotonically growing totals."""

    queued: int
    active: int
    generated_tokens_total: int
    prompt_tokens_total: int
    requests_total: int = 0
    prefills_total: int = 0
    decode_steps_total: int = 0
    decode_steps_by_batch: tuple[int, ...] = ()  # [k-1] = decode steps that ran with k rows
    finished_by_reason: Mapping[str, int] = field(default_factory=dict)


class Generation:
    """Handle of one submitted request; timing fields are filled in by the engine as it runs."""

    def __init__(
        self, engine: LlmEngine, prompt: NDArray[np.int64], params: SamplingParams, sink: TokenSink
    ) -> None:
        self.prompt_tokens = int(prompt.shape[0])
        self.params = params
        self.submitted_at = time.monotonic()
        self.first_token_s: float | None = None  # submit -> first on_tokens
        self.decode_tokens_per_s: float | None = None  # tokens after the first / their wall time
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._engine = engine
        self._prompt = prompt
        self._sink = sink
        self._cancelled = False
        self._done = threading.Event()
        self._first_token_at = 0.0

    def cancel(self) -> None:
        """Ask the engine to stop; the sink gets on_finish("cancelled") at the next step boundary."""
        self._cancelled = True
        self._engine._wake()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until on_finish has been delivered (for callers outside the event loop, and tests)."""
        return self._done.wait(timeout)


class _Seq:
    """Engine-thread state of an admitted request."""

    __slots__ = ("gen", "length", "next_token", "sampler")

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.sampler = Sampler(gen.params)
        self.length = 0  # positions held in the KV cache
        self.next_token = 0  # sampled, emitted, not yet fed to the model


class _Graph:
    """What the engine needs to know about the graph's I/O (the converter's contract, see SPEC.md)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        for name in ("input_ids", "attention_mask"):
            if name not in inputs:
                raise ValueError(f"model has no input {name!r}")
        self.layers = 0
        while f"past_key_values.{self.layers}.key" in inputs:
            self.layers += 1
        if self.layers == 0 or "logits" not in outputs:
            raise ValueError("model lacks past_key_values.0.key or logits: not the LLM graph contract")
        shape = inputs["past_key_values.0.key"].shape
        self.kv_heads, self.head_size = int(shape[1]), int(shape[3])
        if inputs["past_key_values.0.key"].type != "tensor(float)":
            raise ValueError("the engine expects a float32 KV cache")
        logits = outputs["logits"].shape
        self.vocab = int(logits[2])
        # The converter may emit only the last position's logits (S' = 1); then prefill needs no big output.
        self.last_only = logits[1] == 1
        if outputs["logits"].type != "tensor(float)":
            raise ValueError("the engine expects float32 logits")


class LlmEngine:
    """Continuous batching of token generation on one CPU session; see the module docstring.

    Beyond the spec's arguments (all keyword-only, with defaults): on_done is called on the engine thread
    with each finished Generation (for TTFT / decode-rate histograms); optimization is the ORT graph level
    ("all" | "extended" | "basic"); spin lets ORT's pool threads busy-wait between kernels (on an idle 2-core
    host +33% decode; on a contended one it costs 30-50%, pass spin=False there); arena is ORT's CPU memory
    arena; session_config holds extra ORT session config entries; kv_release_after_s is how long the KV
    pages of finished requests stay mapped once the engine is idle (mapping them again costs the next prompt
    a page fault per 4 KiB: ~1,260 faults and +30 ms for a 104-token prompt on a 2-vCPU VM).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        max_batch: int = 4,
        max_context: int = 2048,
        queue_limit: int = 16,
        threads: int | None = None,
        on_done: Callable[[Generation], None] | None = None,
        optimization: str = "all",
        spin: bool = True,
        arena: bool = True,
        session_config: Mapping[str, str] | None = None,
        kv_release_after_s: float = 5.0,
    ) -> None:
        if max_batch < 1 or max_context < 2 or queue_limit < 0:
            raise ValueError("max_batch >= 1, max_context >= 2 and queue_limit >= 0 are required")
        model_dir = Path(model_dir)
        facts: dict[str, Any] = {}
        if (model_dir / "llm.json").is_file():
            facts = json.loads((model_dir / "llm.json").read_text())
        if "context_length" in facts and max_context > int(facts["context_length"]):
            raise ValueError(f"max_context {max_context} exceeds the model's {facts['context_length']}")
        self.max_batch = max_batch
        self.max_context = max_context
        self.queue_limit = queue_limit
        self.kv_release_after_s = kv_release_after_s
        self.threads = threads or len(os.sched_getaffinity(0))
        self._on_done = on_done
        self.session = _make_session(
            model_dir / "model.onnx",
            threads=self.threads,
            optimization=optimization,
            spin=spin,
            arena=arena,
            config=session_config or {},
        )
        self.graph = _Graph(self.session)
        self.vocab = self.graph.vocab

        g = self.graph
        kv_shape = (max_batch, g.kv_heads, max_context, g.head_size)
        self._keys = [_lazy_zeros(kv_shape) for _ in range(g.layers)]
        self._values = [_lazy_zeros(kv_shape) for _ in range(g.layers)]
        self._positions = np.arange(max_context, dtype=np.int64)
        self._mask = np.zeros((max_batch, max_context), np.int64)  # decode mask: row r is row r's positions
        self._ones = np.ones(max_context, np.int64)  # prefill mask
        self._lengths = np.zeros(max_batch, np.int64)
        self._decode: dict[int, tuple[ort.IOBinding, NDArray[np.int64], NDArray[np.float32]]] = {}
        self._prefill: dict[int, tuple[ort.IOBinding, NDArray[np.float32] | None]] = {}

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: deque[Generation] = deque()
        self._admitted = 0  # requests taken off the queue and not yet finished (under _lock)
        self._closing = False
        self._active: list[_Seq] = []  # engine thread only; index = KV row
        self._filling: _Seq | None = None  # being prefilled, on row len(_active)
        self._generated_total = 0
        self._prompt_total = 0
        self._requests_total = 0
        self._prefills_total = 0
        self._steps_by_batch = [0] * max_batch
        self._finished: dict[str, int] = {"stop": 0, "length": 0, "cancelled": 0, "error": 0}
        self._run_options = ort.RunOptions()
        self._heap_dirty = False  # steps ran since the heap was last trimmed (engine thread only)
        self._kv_dirty = False  # steps wrote KV pages since they were last released (under _lock)
        release_free_heap()  # the model's parse buffers, freed by now, still sit in the middle of the heap
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: TokenSink) -> Generation:
        """Queue a request; raises ValueError (bad prompt/params) or EngineFull (over capacity)."""
        params.validate()
        if len(prompt) == 0:
            raise ValueError("the prompt is empty")
        if len(prompt) + params.max_tokens > self.max_context:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the context "
                f"({self.max_context})"
            )
        try:  # a private contiguous copy: prefill reads it in place, chunk by chunk
            ids = np.array(prompt, dtype=np.int64)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"prompt token ids must be integers: {exc}") from exc
        if ids.ndim != 1 or int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab})")
        gen = Generation(self, ids, params, sink)
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is closed")
            if len(self._pending) + self._admitted >= self.max_batch + self.queue_limit:
                raise EngineFull(f"{self.max_batch} running and {self.queue_limit} queued requests already")
            self._pending.append(gen)
            self._cond.notify()
        return gen

    def stats(self) -> EngineStats:
        with self._lock:
            queued, admitted = len(self._pending), self._admitted
        return EngineStats(
            queued=queued,
            active=admitted,
            generated_tokens_total=self._generated_total,
            prompt_tokens_total=self._prompt_total,
            requests_total=self._requests_total,
            prefills_total=self._prefills_total,
            decode_steps_total=sum(self._steps_by_batch),
            decode_steps_by_batch=tuple(self._steps_by_batch),
            finished_by_reason=dict(self._finished),
        )

    def close(self) -> None:
        """Stop the engine thread; unfinished requests get on_finish("error", "engine closed")."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def __enter__(self) -> LlmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if self._heap_dirty and self._idle():
                # the last request has left: what its steps freed goes back to the OS (<1 ms, off the lock)
                self._heap_dirty = False
                release_free_heap()
            with self._cond:
                if not self._wait_for_work():
                    self._kv_dirty = False
                    release_kv = True
                else:
                    release_kv = False
                    self._heap_dirty = self._kv_dirty = True
                    if self._closing:
                        break
                    cancelled = self._take_pending()
            if release_kv:  # off the lock: submit() never waits for it
                self._release_rows()
                continue
            try:
                for gen in cancelled:
                    self._deliver_finish(gen, "cancelled", None)
                self._drop_cancelled()
                if self._filling is not None:
                    self._prefill_chunk(self._filling)
                if self._active:
                    self._decode_step()
            except Exception as exc:  # a bug here must not strand every caller: fail what is in flight
                log.exception("engine step failed")
                self._fail_in_flight(f"engine failure: {exc}")
        self._shutdown()

    def _wait_for_work(self) -> bool:
        """Hold `_cond`. True once there is work; False when KV pages written since the last release have
        sat unused for kv_release_after_s (the caller releases them, then waits again)."""
        deadline: float | None = None
        while self._no_work():
            if not self._kv_dirty:
                self._cond.wait()
                continue
            now = time.monotonic()
            deadline = now + self.kv_release_after_s if deadline is None else deadline
            if now >= deadline:
                return False
            self._cond.wait(deadline - now)
        return True

    def _no_work(self) -> bool:
        """Nothing queued, prefilling or decoding, and not closing (hold `_cond`)."""
        return not (self._closing or self._pending or self._active or self._filling)

    def _idle(self) -> bool:
        with self._cond:
            return self._no_work()

    def _fail_in_flight(self, error: str) -> None:
        """Finish the running and the prefilling requests with "error" (the queue is left to run)."""
        seqs = [*self._active, *([self._filling] if self._filling is not None else [])]
        self._active, self._filling = [], None
        for seq in seqs:
            self._deliver_finish(seq.gen, "error", error)

    def _take_pending(self) -> list[Generation]:
        """Under the lock: take cancelled queued requests out, and admit the next one if a row is free."""
        cancelled = [g for g in self._pending if g._cancelled]
        for gen in cancelled:
            self._pending.remove(gen)
            self._admitted += 1  # _deliver_finish decrements
        if self._filling is None and self._pending and len(self._active) < self.max_batch:
            self._filling = _Seq(self._pending.popleft())
            self._admitted += 1
        return cancelled

    def _drop_cancelled(self) -> None:
        for row in range(len(self._active) - 1, -1, -1):
            if self._active[row].gen._cancelled:
                self._finish_row(row, "cancelled", None)
        if self._filling is not None and self._filling.gen._cancelled:
            self._deliver_finish(self._filling.gen, "cancelled", None)
            self._filling = None

    def _prefill_chunk(self, seq: _Seq) -> None:
        """Run the next PREFILL_CHUNK prompt tokens of the admitted request on its row (the first free one);
        after the last chunk, sample its first token and let it join the decode batch."""
        row = len(self._active)
        prompt = seq.gen._prompt
        start = seq.length
        stop = min(prompt.shape[0], start + PREFILL_CHUNK)
        binding, logits_buf = self._prefill_binding(row)
        ptr = prompt.ctypes.data + start * prompt.itemsize
        binding.bind_input("input_ids", "cpu", 0, np.int64, [1, stop - start], ptr)
        binding.bind_input("attention_mask", "cpu", 0, np.int64, [1, stop], self._ones.ctypes.data)
        try:
            self.session.run_with_iobinding(binding, self._run_options)
            if stop == prompt.shape[0]:
                logits = binding.get_outputs()[0].numpy()[0, -1] if logits_buf is None else logits_buf[0, -1]
        except Exception as exc:  # a failed run fails this request only; the engine keeps serving
            log.exception("prefill failed")
            self._filling = None
            self._deliver_finish(seq.gen, "error", f"prefill failed: {exc}")
            return
        self._prompt_total += stop - start
        seq.length = stop
        if stop < prompt.shape[0]:
            return
        self._prefills_total += 1
        self._filling = None
        self._active.append(seq)
        if not self._deliver(row, seq.sampler.pick(logits)):
            self._remove_row(row)

    def _decode_step(self) -> None:
        k = len(self._active)
        binding, ids, logits = self._decode_binding(k)
        lengths = self._lengths
        for row, seq in enumerate(self._active):
            ids[row, 0] = seq.next_token
            lengths[row] = seq.length + 1
        np.less(self._positions, lengths[:k, None], out=self._mask[:k], casting="unsafe")
        try:
            self.session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:
            log.exception("decode step failed")
            for row in range(k - 1, -1, -1):
                self._finish_row(row, "error", f"decode failed: {exc}")
            return
        self._steps_by_batch[k - 1] += 1
        for seq in self._active:
            seq.length += 1
        rows = logits[:, 0]
        finite, best = finite_rows_and_argmax(rows)
        finished: list[int] = []
        for row, seq in enumerate(self._active):
            sampler = seq.sampler
            token: int | None = None
            if finite[row]:
                token = best[row] if sampler.greedy else sampler.sample(rows[row])
            if not self._deliver(row, token):
                finished.append(row)
        # Rows that finished leave now, highest first, so each move takes a surviving row.
        for row in reversed(finished):
            self._remove_row(row)

    def _deliver(self, row: int, token: int | None) -> bool:
        """Deliver the row's next token (None: non-finite logits); False when the sequence has finished."""
        seq = self._active[row]
        gen = seq.gen
        params = gen.params
        reason: str | None = None
        error: str | None = None
        if token is None:
            reason, error = "error", "the model produced non-finite logits"
        elif token in params.stop_token_ids:
            reason = "stop"
        else:
            if gen.completion_tokens == 0:
                gen._first_token_at = time.monotonic()
                gen.first_token_s = gen._first_token_at - gen.submitted_at
            gen.completion_tokens += 1
            self._generated_total += 1
            try:
                gen._sink.on_tokens([token])
            except Exception as exc:
                log.exception("token sink failed")
                reason, error = "error", f"token sink failed: {exc}"
            else:
                if gen.completion_tokens >= params.max_tokens or seq.length >= self.max_context:
                    reason = "length"
                else:
                    seq.next_token = token
        if reason is None:
            return True
        self._deliver_finish(gen, reason, error)
        return False

    def _finish_row(self, row: int, reason: str, error: str | None) -> None:
        self._deliver_finish(self._active[row].gen, reason, error)
        self._remove_row(row)

    def _remove_row(self, row: int) -> None:
        """Drop a row, moving the last sequence's used KV positions into it to keep rows 0..k-1 dense."""
        last = len(self._active) - 1
        if row != last:
            moved = self._active[last]
            self._move_row(last, row, moved.length)
            self._active[row] = moved
        self._active.pop()
        if self._filling is not None:  # a prompt being prefilled sits right after the batch: follow it down
            self._move_row(last + 1, last, self._filling.length)
            last += 1

    def _release_rows(self) -> None:
        """Give every row's KV pages back to the OS (they read as zeros again): memory follows the tokens
        in use once a burst is over, without a page fault per 4 KiB on each prompt while requests come."""
        for cache in (*self._keys, *self._values):
            for row in range(self.max_batch):
                _release(cache, row)

    def _move_row(self, source: int, target: int, n: int) -> None:
        for cache in (*self._keys, *self._values):
            cache[target, :, :n] = cache[source, :, :n]

    def _deliver_finish(self, gen: Generation, reason: str, error: str | None) -> None:
        if gen.finish_reason is not None:  # exactly one on_finish per request
            return
        now = time.monotonic()
        gen.finish_reason, gen.error = reason, error
        if gen.completion_tokens > 1:
            gen.decode_tokens_per_s = (gen.completion_tokens - 1) / max(now - gen._first_token_at, 1e-9)
        self._finished[reason] = self._finished.get(reason, 0) + 1
        self._requests_total += 1
        with self._lock:
            self._admitted -= 1
        try:
            gen._sink.on_finish(reason, error)
        except Exception:
            log.exception("token sink on_finish failed")
        gen._done.set()
        if self._on_done is not None:
            try:
                self._on_done(gen)
            except Exception:
                log.exception("on_done callback failed")

    def _shutdown(self) -> None:
        self._fail_in_flight("engine closed")
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            self._admitted += len(pending)
        for gen in pending:
            self._deliver_finish(gen, "error", "engine closed")

    # ---- bindings (built once per batch size / row, reused every step) ---------------------------------
    def _bind_cache(self, binding: ort.IOBinding, rows: slice) -> None:
        g = self.graph
        for layer in range(g.layers):
            for kind, caches in (("key", self._keys), ("value", self._values)):
                view = caches[layer][rows]
                shape = list(view.shape)
                ptr = view.ctypes.data
                binding.bind_input(f"past_key_values.{layer}.{kind}", "cpu", 0, np.float32, shape, ptr)
                binding.bind_output(f"present.{layer}.{kind}", "cpu", 0, np.float32, shape, ptr)

    def _decode_binding(self, k: int) -> tuple[ort.IOBinding, NDArray[np.int64], NDArray[np.float32]]:
        cached = self._decode.get(k)
        if cached is None:
            binding = self.session.io_binding()
            ids = np.zeros((k, 1), np.int64)
            logits = np.empty((k, 1, self.vocab), np.float32)
            binding.bind_input("input_ids", "cpu", 0, np.int64, [k, 1], ids.ctypes.data)
            mask = self._mask[:k]
            binding.bind_input("attention_mask", "cpu", 0, np.int64, list(mask.shape), mask.ctypes.data)
            binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            self._bind_cache(binding, slice(0, k))
            cached = self._decode[k] = (binding, ids, logits)
        return cached

    def _prefill_binding(self, row: int) -> tuple[ort.IOBinding, NDArray[np.float32] | None]:
        cached = self._prefill.get(row)
        if cached is None:
            binding = self.session.io_binding()
            logits: NDArray[np.float32] | None = None
            if self.graph.last_only:
                logits = np.empty((1, 1, self.vocab), np.float32)
                binding.bind_output("logits", "cpu", 0, np.float32, [1, 1, self.vocab], logits.ctypes.data)
            else:
                binding.bind_output("logits", "cpu")  # [1, S, V]: let ORT size it per prompt
            self._bind_cache(binding, slice(row, row + 1))
            cached = self._prefill[row] = (binding, logits)
        return cached


def finite_rows_and_argmax(rows: NDArray[np.float32]) -> tuple[list[bool], list[int]]:
    """Per row of [k, vocab] logits: whether every value is finite, and the first maximum's index.

    Two reductions and no [k, vocab] temporaries (np.isfinite(rows).all() made one, ~70 us a step here):
    argmax stops at the first NaN, so a row holding NaN or +inf has a non-finite value at its argmax, and
    a row holding -inf has it as its minimum.
    """
    best = rows.argmax(axis=1)
    top = rows[np.arange(rows.shape[0]), best]
    finite = np.isfinite(top) & np.isfinite(rows.min(axis=1))
    return finite.tolist(), best.tolist()


def _lazy_zeros(shape: tuple[int, ...]) -> NDArray[np.float32]:
    """A zeroed float32 array whose memory is committed 4 KiB page by page as positions are written.

    np.zeros would do, except that numpy madvises big arrays MADV_HUGEPAGE: one write then commits 2 MiB,
    and a 105-token prompt made every row of every layer resident (~94 MiB per row). An anonymous mmap
    with MADV_NOHUGEPAGE keeps RSS proportional to the positions in use.
    """
    size = int(np.prod(shape)) * 4
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=np.float32).reshape(shape)


def _release(cache: NDArray[np.float32], row: int) -> None:
    """MADV_DONTNEED on row `row` of a _lazy_zeros buffer: its pages read as zeros again and leave RSS."""
    region: object = cache.base
    while region is not None and not isinstance(region, mmap.mmap):
        # ndarray -> ndarray -> memoryview -> mmap: a memoryview names what it views as `obj`, not `base`
        region = region.obj if isinstance(region, memoryview) else getattr(region, "base", None)
    if region is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    size = cache[0].nbytes  # rows are whole pages: kv_heads * max_context * head * 4 bytes
    if size % mmap.PAGESIZE == 0:
        region.madvise(mmap.MADV_DONTNEED, row * size, size)


def _make_session(
    path: Path, *, threads: int, optimization: str, spin: bool, arena: bool, config: Mapping[str, str]
) -> ort.InferenceSession:
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.enable_cpu_mem_arena = arena
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
