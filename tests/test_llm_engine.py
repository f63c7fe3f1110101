"""The continuous-batching LLM engine against the real converted model (built by `make setup`).

Batched decoding must reproduce solo decoding token for token (rows of different lengths, rows joining
mid-run and rows moving when another leaves), and the sampler must be reproducible per seed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enclave import llm_engine
from enclave.llm_engine import EngineFull, Generation, LlmEngine, SamplingParams
from enclave.llm_sampling import Sampler, inverse_cdf, nucleus

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "llm" / "smollm2-135m-instruct"
needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "model.onnx").is_file(),
    reason=f"the converted LLM is not built ({MODEL_DIR}); run `make setup`",
)

# Chat prompts of different lengths as SmolLM2 token ids ("What is the capital of France?", a poem, "Hi",
# why the sky is blue), so the tests need no tokenizer.
PROMPTS = [
    [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
    [1, 4093, 198, 19161, 253, 1890, 8216, 563, 260, 3426, 30, 2, 198, 1, 520, 9531, 198],
    [1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198],
    [
        1,
        4093,
        198,
        36971,
        1701,
        260,
        6376,
        314,
        4461,
        281,
        827,
        8545,
        28,
        5361,
        30,
        2,
        198,
        1,
        520,
        9531,
        198,
    ],
]


class Sink:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.error: str | None = None
        self.finished = threading.Event()

    def on_tokens(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def on_finish(self, reason: str, error: str | None) -> None:
        self.reason, self.error = reason, error
        self.finished.set()


def run(engine: LlmEngine, prompt: list[int], params: SamplingParams) -> Sink:
    sink = Sink()
    assert engine.submit(prompt, params, sink).wait(60)
    return sink


def greedy(n: int, stop: frozenset[int] = frozenset()) -> SamplingParams:
    return SamplingParams(max_tokens=n, stop_token_ids=stop)


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlmEngine]:
    with LlmEngine(MODEL_DIR, max_batch=4, max_context=512, queue_limit=4, threads=2) as eng:
        yield eng


# ---- sampler (no model) -----------------------------------------------------------------------------------
def test_greedy_takes_first_maximum() -> None:
    logits = np.array([0.5, 2.0, -1.0, 2.0], np.float32)
    assert Sampler(SamplingParams(max_tokens=1)).pick(logits) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_pick_nothing(bad: float) -> None:
    logits = np.zeros(1000, np.float32)
    logits[7] = bad
    assert Sampler(SamplingParams(max_tokens=1)).pick(logits) is None
    assert Sampler(SamplingParams(max_tokens=1, temperature=0.8, seed=1)).pick(logits) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at", [0, 7, 999])
def test_a_decode_step_flags_exactly_the_rows_holding_a_non_finite_value(bad: float, at: int) -> None:
    rows = np.random.default_rng(at).normal(size=(3, 1000)).astype(np.float32)
    rows[1, at] = bad
    rows[2, 3] = rows[2, 5] = 9.0  # a tie: the first maximum wins, as in Sampler.pick
    finite, best = llm_engine.finite_rows_and_argmax(rows)
    assert finite == [True, False, True]
    assert best[0] == int(np.argmax(rows[0])) and best[2] == 3
    assert finite == np.isfinite(rows).all(axis=1).tolist()


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999, 1.0])
def test_nucleus_matches_a_full_stable_sort(top_p: float) -> None:
    rng = np.random.default_rng(3)
    for scale in (0.3, 3.0, 30.0):  # flat (the probe is not enough) to peaked distributions
        logits = rng.normal(size=5000) * scale
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        probs[10:20] = probs[10]  # ties: lower ids first
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        count = min(int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1, probs.size)
        ids, kept = nucleus(probs, top_p)
        assert ids.tolist() == order[:count].tolist()
        assert np.array_equal(kept, probs[order[:count]])


def test_two_level_inverse_cdf_matches_a_flat_one() -> None:
    rng = np.random.default_rng(5)
    probs = np.exp(rng.normal(size=49152) * 2)
    probs[100:3000] = 0.0  # zero-probability tokens are never drawn
    probs /= probs.sum()
    cdf = np.cumsum(probs)
    for u in [0.0, 1e-9, *rng.random(200).tolist(), 1 - 1e-12]:
        got = inverse_cdf(probs, u)
        assert probs[got] > 0
        flat = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
        assert got == flat or abs(cdf[min(flat, got)] - u) < 1e-12  # only float rounding at an edge


def test_seeded_sampler_is_reproducible() -> None:
    logits = np.random.default_rng(0).normal(size=49152).astype(np.float32) * 3
    draws = [
        [
            Sampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.95, seed=s)).pick(logits)
            for _ in "ab"
        ]
        for s in range(8)
    ]
    assert all(a == b for a, b in draws)
    assert len({a for a, _ in draws}) > 1


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=0),
        SamplingParams(max_tokens=4, temperature=-1),
        SamplingParams(max_tokens=4, top_p=0),
        SamplingParams(max_tokens=4, top_p=1.5),
        SamplingParams(max_tokens=4, temperature=float("nan")),
    ],
)
def test_invalid_params_are_refused(params: SamplingParams) -> None:
    with pytest.raises(ValueError):
        params.validate()


# ---- engine (model) ---------------------------------------------------------------------------------------
@needs_model
def test_greedy_is_deterministic_and_respects_max_tokens(engine: LlmEngine) -> None:
    first = run(engine, PROMPTS[0], greedy(12))
    second = run(engine, PROMPTS[0], greedy(12))
    assert first.tokens == second.tokens
    assert len(first.tokens) == 12
    assert first.reason == "length"


def _plain_greedy(session: Any, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the plain way: run() with an exact-width mask and the cache concatenated each step."""
    graph = llm_engine._Graph(session)
    past = {
        f"past_key_values.{i}.{kind}": np.zeros((1, graph.kv_heads, 0, graph.head_size), np.float32)
        for i in range(graph.layers)
        for kind in ("key", "value")
    }
    ids, tokens = list(prompt), list[int]()
    for _ in range(n):
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, len(tokens) + len(prompt)), np.int64),
        }
        logits, *present = session.run(None, {**feeds, **past})
        past = dict(zip(past, present, strict=True))
        tokens.append(int(np.argmax(logits[0, -1])))
        ids = tokens[-1:]
    return tokens


@needs_model
def test_the_engine_decodes_like_a_plain_loop_with_exact_width_masks(engine: LlmEngine) -> None:
    """The engine binds a max_context-wide decode mask once; the answer must be the exact-width one's."""
    for prompt in PROMPTS[:2]:
        assert run(engine, prompt, greedy(24)).tokens == _plain_greedy(engine.session, prompt, 24)


@needs_model
def test_a_batch_of_four_decodes_like_four_solo_runs(engine: LlmEngine) -> None:
    # Rows of different lengths; one seeded-sampling row (the graph is batch-invariant, so draws match too).
    params = [
        greedy(64),
        SamplingParams(max_tokens=64, temperature=0.8, top_p=0.9, seed=11),
        *[greedy(64)] * 2,
    ]
    solo = [run(engine, p, q).tokens for p, q in zip(PROMPTS, params, strict=True)]
    before = engine.stats().decode_steps_by_batch
    sinks = [Sink() for _ in PROMPTS]
    gens = [engine.submit(p, q, s) for p, q, s in zip(PROMPTS, params, sinks, strict=True)]
    assert all(g.wait(120) for g in gens)
    assert [s.tokens for s in sinks] == solo
    after = engine.stats().decode_steps_by_batch
    assert after[3] > before[3], "no decode step ran with all four rows"
    assert all(g.first_token_s is not None and g.first_token_s > 0 for g in gens)


@needs_model
def test_requests_join_and_leave_a_running_batch(engine: LlmEngine) -> None:
    solo_a = run(engine, PROMPTS[0], greedy(12)).tokens
    solo_b = run(engine, PROMPTS[1], greedy(30)).tokens
    before = engine.stats().decode_steps_by_batch
    a, b = Sink(), Sink()
    gen_a = engine.submit(PROMPTS[0], greedy(12), a)
    wait_for(lambda: len(a.tokens) >= 3)
    gen_b = engine.submit(PROMPTS[1], greedy(30), b)  # joins at a step boundary, outlives a
    assert gen_a.wait(60) and gen_b.wait(60)
    assert a.tokens == solo_a  # a decoded alongside b
    assert b.tokens == solo_b  # b moved from row 1 to row 0 when a left
    after = engine.stats().decode_steps_by_batch
    assert after[1] > before[1], "no decode step ran with two rows"
    assert after[0] > before[0] + 3, "b did not keep decoding alone after a left"


@needs_model
def test_chunked_prefill_while_a_stream_leaves(engine: LlmEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    long_prompt = (PROMPTS[3][:-6] * 20)[:380] + PROMPTS[3][-6:]
    whole = run(engine, long_prompt, greedy(6)).tokens  # one 386-token chunk
    monkeypatch.setattr(llm_engine, "PREFILL_CHUNK", 64)
    assert run(engine, long_prompt, greedy(6)).tokens == whole
    solo_a = run(engine, PROMPTS[0], greedy(3)).tokens
    a, b = Sink(), Sink()
    gen_a = engine.submit(PROMPTS[0], greedy(3), a)
    wait_for(lambda: len(a.tokens) >= 1)
    gen_b = engine.submit(long_prompt, greedy(6), b)  # 7 chunks; a leaves mid-prefill and b's row moves
    assert gen_a.wait(60) and gen_b.wait(60)
    assert a.tokens == solo_a
    assert b.tokens == whole


@needs_model
def test_cancel_stops_a_generation(engine: LlmEngine) -> None:
    sink = Sink()
    gen = engine.submit(PROMPTS[2], greedy(400), sink)
    wait_for(lambda: len(sink.tokens) >= 2)
    gen.cancel()
    assert gen.wait(30)
    assert sink.reason == "cancelled"
    assert len(sink.tokens) < 400
    assert run(engine, PROMPTS[2], greedy(4)).reason == "length"  # still serving


@needs_model
def test_stop_token_ends_the_generation_and_is_not_emitted(engine: LlmEngine) -> None:
    tokens = run(engine, PROMPTS[3], greedy(16)).tokens
    cut = next(i for i in range(2, 16) if tokens[i] not in tokens[:i])
    stopped = run(engine, PROMPTS[3], greedy(16, frozenset({tokens[cut], 999_999})))
    assert stopped.reason == "stop"
    assert stopped.tokens == tokens[:cut]


@needs_model
def test_seeded_sampling_is_reproducible_and_seeds_differ(engine: LlmEngine) -> None:
    def sample(seed: int) -> list[int]:
        return run(
            engine, PROMPTS[1], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        ).tokens

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in (1, 2, 3)}) > 1


@needs_model
def test_prompt_and_capacity_limits(engine: LlmEngine) -> None:
    with pytest.raises(ValueError):
        engine.submit([], greedy(4), Sink())
    with pytest.raises(ValueError):
        engine.submit([1] * 500, greedy(13), Sink())  # 513 > max_context 512
    with pytest.raises(ValueError):
        engine.submit([engine.vocab], greedy(4), Sink())
    assert run(engine, [1] * 500, greedy(12)).reason == "length"  # exactly fills the context


@needs_model
def test_engine_full_when_over_the_queue_limit_and_close_fails_in_flight() -> None:
    small = LlmEngine(MODEL_DIR, max_batch=1, max_context=256, queue_limit=1, threads=2)
    running, queued = Sink(), Sink()
    gens: list[Generation] = [small.submit(PROMPTS[0], greedy(200), s) for s in (running, queued)]
    with pytest.raises(EngineFull):
        small.submit(PROMPTS[0], greedy(4), Sink())
    gens[1].cancel()  # the queued one
    assert gens[1].wait(30) and queued.reason == "cancelled" and queued.tokens == []
    wait_for(lambda: len(running.tokens) >= 1)
    small.close()
    assert running.reason == "error" and running.error == "engine closed"
    stats = small.stats()
    assert stats.queued == 0 and stats.active == 0
    assert stats.finished_by_reason["cancelled"] == 1 and stats.finished_by_reason["error"] == 1


@needs_model
def test_a_failing_sink_fails_only_its_request(engine: LlmEngine) -> None:
    class Exploding(Sink):
        def on_tokens(self, tokens: list[int]) -> None:
            super().on_tokens(tokens)
            if len(self.tokens) == 3:
                raise RuntimeError("client went away")

    bad = Exploding()
    assert engine.submit(PROMPTS[1], greedy(20), bad).wait(60)
    assert bad.reason == "error" and bad.error is not None and "client went away" in bad.error
    assert len(bad.tokens) == 3
    assert run(engine, PROMPTS[1], greedy(3)).reason == "length"


@needs_model
def test_a_failed_run_fails_its_requests_and_the_engine_keeps_serving(
    engine: LlmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.session.run_with_iobinding
    calls = {"n": 0}

    def flaky(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, decode, then a failing decode
            raise RuntimeError("injected failure")
        real(*args)

    monkeypatch.setattr(engine.session, "run_with_iobinding", flaky)
    failed = run(engine, PROMPTS[0], greedy(20))
    assert failed.reason == "error" and failed.error is not None and "injected" in failed.error
    assert len(failed.tokens) == 2
    monkeypatch.setattr(engine.session, "run_with_iobinding", real)
    assert run(engine, PROMPTS[0], greedy(4)).reason == "length"


@needs_model
def test_stats_count_tokens(engine: LlmEngine) -> None:
    before = engine.stats()
    run(engine, PROMPTS[2], greedy(5))
    after = engine.stats()
    assert after.generated_tokens_total - before.generated_tokens_total == 5
    assert after.prompt_tokens_total - before.prompt_tokens_total == len(PROMPTS[2])
    assert after.queued == 0 and after.active == 0


@needs_model
def test_the_engine_trims_the_heap_after_its_load_and_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the load and a batch of requests freed goes back to the OS (enclave/heap.py; about 25 MiB each
    of the server's RSS): once after the session is built, and once whenever the last request has left,
    never per step or per request."""
    import enclave.llm_engine as llm_engine

    calls: list[float] = []

    def record() -> bool:
        calls.append(time.monotonic())
        return True

    monkeypatch.setattr(llm_engine, "release_free_heap", record)
    with LlmEngine(MODEL_DIR, max_batch=2, max_context=64, queue_limit=0, threads=1) as small:
        assert len(calls) == 1
        assert run(small, PROMPTS[0][:8], greedy(6)).reason == "length"
        wait_for(lambda: len(calls) == 2)
        sinks = [Sink(), Sink()]
        gens = [small.submit(PROMPTS[i][:8], greedy(12), sink) for i, sink in enumerate(sinks)]
        assert all(gen.wait(30) for gen in gens)
        wait_for(lambda: len(calls) == 3)
        time.sleep(0.2)
        assert len(calls) == 3  # one trim for the whole batch, after both left


def test_release_gives_one_rows_pages_back() -> None:
    cache = llm_engine._lazy_zeros((3, 2, 1024, 16))
    cache[:, :, :100] = 1.0
    llm_engine._release(cache, 1)
    assert not cache[1].any()  # released pages read as zeros again
    assert cache[0, :, :100].all() and cache[2, :, :100].all()


@needs_model
def test_kv_pages_stay_for_the_next_request_and_go_back_once_idle() -> None:
    """Re-mapping released pages costs a prompt a fault per 4 KiB, so rows keep them while requests come;
    after kv_release_after_s of idleness every row's pages go back to the OS."""
    with LlmEngine(
        MODEL_DIR, max_batch=2, max_context=64, queue_limit=0, threads=1, kv_release_after_s=0.3
    ) as small:
        first = run(small, PROMPTS[0][:8], greedy(6)).tokens
        assert small._keys[0][0].any()  # kept: the request has left, the engine is not idle long enough
        wait_for(lambda: not any(cache.any() for cache in (*small._keys, *small._values)))
        assert run(small, PROMPTS[0][:8], greedy(6)).tokens == first
