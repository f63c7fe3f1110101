"""The LLM against llama.cpp, in one run: same GGUF, same prompt tokens, same thread count, greedy.

    .venv/bin/python -m bench.bench_llm [--threads 2] [--tokens 128] [--runs 3] [--rounds 3]

1. in-process: our engine (enclave/llm_engine.py over the converted ONNX graph) against llama-cpp-python's
   low-level eval: prefill of the ~105-token chat prompt, decode tokens/s over 128 greedy tokens;
2. over HTTP + SSE with receipts: one stream through the official `openai` client against our server
   (`verinfer serve`) and llama-server, and again with a plain SSE reader (whose parsing costs the shared
   cores little, so what it loses against in-process is the server's own cost), each stream against an
   in-process run of the same runtime made just before it (the machine drifts more than the loss); our
   server's RSS;
3. four streams at once through the `openai` client: our server against llama.cpp's C++ `llama-server
   --parallel 4` (continuous batching); aggregate decode tokens/s and the worst time to first token.

llama-cpp-python and llama-server are built on demand into build/bench-cache/ (bench/llm_baselines.py;
minutes, once). Each side is measured in alternating rounds (in-process ones each in a fresh process) and the
medians are compared, because on a 2-core machine the load drifts between measurements. Fairness:
llama.cpp's KV cache is cleared between in-process runs and llama-server gets
`cache_prompt: false` and `--cache-ram 0` (else a shared prompt prefix skips prefill), `repeat_penalty: 1`
and `top_k: 1` (its default sampler is not greedy); both sides ignore end-of-sequence so every stream makes
the same number of tokens. Figures are printed whatever they are, with the goals beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from bench.llm_baselines import (
    LLAMA_SERVER_EXTRA_BODY,
    llama_cpp_inprocess,
    llama_server,
    openai_streams,
    plain_sse_stream,
    render_chat_tokens,
)
from bench.llm_prompts import chat_messages

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "models" / "llm" / "smollm2-135m-instruct"
GGUF = REPO / "build" / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
OURS_EXTRA_BODY = {"ignore_eos": True, "temperature": 0}  # greedy, as llama-server is given
RESULTS = REPO / "build" / "bench-llm.json"


class _Timer:
    """Token sink for the in-process engine: when each step's tokens arrived."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.reason: str | None = None

    def on_tokens(self, tokens: list[int]) -> None:
        self.times.append(time.perf_counter())
        self.tokens.extend(tokens)

    def on_finish(self, reason: str, error: str | None) -> None:
        self.reason = reason if error is None else f"{reason}: {error}"
        self.done.set()


def ours_inprocess(prompt: list[int], n_decode: int, threads: int, runs: int = 3) -> dict[str, Any]:
    from enclave.llm_engine import LlmEngine, SamplingParams

    params = SamplingParams(
        max_tokens=n_decode, temperature=0.0, top_p=1.0, seed=None, stop_token_ids=frozenset()
    )
    prefill_ms: list[float] = []
    decode: list[float] = []
    outputs: list[list[int]] = []
    with LlmEngine(MODEL_DIR, max_batch=4, max_context=2048, threads=threads) as engine:
        for run in range(runs + 1):  # the first run warms up
            timer = _Timer()
            started = time.perf_counter()
            engine.submit(prompt, params if run else SamplingParams(8, 0.0, 1.0, None, frozenset()), timer)
            timer.done.wait()
            if run == 0:
                continue
            prefill_ms.append((timer.times[0] - started) * 1000.0)
            decode.append((len(timer.tokens) - 1) / (timer.times[-1] - timer.times[0]))
            outputs.append(timer.tokens)
    return {
        "prefill_ms": round(statistics.median(prefill_ms), 1),
        "decode_tok_s": round(statistics.median(decode), 1),
        "decode_tok_s_all": [round(x, 1) for x in decode],
        "deterministic": all(o == outputs[0] for o in outputs),
        "tokens": outputs[0],
    }


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in runs)), 1)


def ours_server(threads: int, n_decode: int, runs: int, paired: Paired) -> dict[str, Any]:
    """Single stream and four streams through our server with receipts, plus its memory."""
    import tempfile

    from verinfer.processes import VERINFER, free_port, stop, wait_ready

    port = free_port()
    pki = Path(tempfile.mkdtemp(prefix="bench-llm-pki-"))
    argv = [VERINFER, "serve", "--port", str(port), "--nsm", "sim", "--pki-dir", str(pki),
            "--access-log", "off", "--llm-threads", str(threads), "--llm-max-batch", "4"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=120)
        figures = stream_figures(f"{url}/v1", MODEL, OURS_EXTRA_BODY, n_decode, runs, paired=paired)
        rss, peak = _rss_kib(process.pid)
    finally:
        stop(process)
    return {**figures, "rss_mib": round(rss / 1024, 1), "peak_rss_mib": round(peak / 1024, 1)}


def theirs_server(threads: int, n_decode: int, runs: int, paired: Paired) -> dict[str, Any]:
    with llama_server(GGUF, threads, parallel=4) as server:
        return stream_figures(
            server.base_url, server.model, LLAMA_SERVER_EXTRA_BODY, n_decode, runs, paired=paired
        )


# The same runtime's in-process decode tok/s, measured in a fresh process while the server sits idle.
Paired = Callable[[], float]


def stream_figures(
    base_url: str, model: str, extra_body: Mapping[str, Any], n_decode: int, runs: int, *, paired: Paired
) -> dict[str, Any]:
    """One stream, then four at once, `runs` times each (after a warm-up), through the openai client.

    Each single stream is preceded by one in-process run of the same runtime (`paired`), and its loss is
    taken against that run: this machine's speed drifts by 10-20 % within minutes, more than the ~5 %
    being measured, so a stream is only compared with an in-process run made next to it.
    """
    messages = chat_messages()
    openai_streams(base_url, model, messages, 1, 8, extra_body)
    single: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    losses: list[float] = []
    plain_losses: list[float] = []
    for _ in range(runs):
        alone = paired()
        single.append(openai_streams(base_url, model, messages, 1, n_decode, extra_body))
        losses.append(1 - single[-1]["streams"][0]["decode_tok_s"] / alone)
        alone = paired()
        plain.append(plain_sse_stream(base_url, model, messages, n_decode, extra_body))
        plain_losses.append(1 - plain[-1]["decode_tok_s"] / alone)
    quad = [openai_streams(base_url, model, messages, 4, n_decode, extra_body) for _ in range(runs)]
    return {
        "single_decode_tok_s": _median([r["streams"][0] for r in single], "decode_tok_s"),
        "single_plain_decode_tok_s": _median(plain, "decode_tok_s"),
        "single_loss_pct": round(100 * statistics.median(losses), 2),
        "single_plain_loss_pct": round(100 * statistics.median(plain_losses), 2),
        "single_ttft_ms": _median([r["streams"][0] for r in single], "ttft_ms"),
        "quad_aggregate_tok_s": _median(quad, "aggregate_decode_tok_s"),
        "quad_worst_ttft_ms": _median(quad, "worst_ttft_ms"),
        "texts_identical": len({t for r in quad for t in r["texts"]} | {single[0]["texts"][0]}) == 1,
    }


def _line(label: str, ours: float, theirs: float, goal: str, higher_better: bool = True) -> str:
    ratio = ours / theirs if higher_better else theirs / ours
    return f"  {label:<46} {ours:>9.1f} {theirs:>11.1f} {ratio:>7.2f}x   goal {goal}"


def _worker(kind: str, prompt: list[int], tokens: int, threads: int, runs: int) -> dict[str, Any]:
    """One in-process measurement in a fresh process, so neither runtime's threads linger into the other's."""
    command = [sys.executable, "-m", "bench.bench_llm", "--worker", kind, "--tokens", str(tokens),
               "--threads", str(threads), "--runs", str(runs), "--prompt", json.dumps(prompt)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, timeout=900)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _alone(kind: str, prompt: list[int], tokens: int, threads: int) -> float:
    """One in-process decode run (after a warm-up) in a fresh process: the pair of one server stream."""
    return float(_worker(kind, prompt, tokens, threads, 1)["decode_tok_s"])


def _pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over alternating rounds (the machine's load drifts; A/B/A/B keeps the ratio honest)."""
    pooled = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            pooled[key] = round(float(statistics.median(r[key] for r in results)), 1)
    pooled["deterministic"] = all(r["deterministic"] for r in results) and all(
        r["tokens"] == results[0]["tokens"] for r in results
    )
    pooled["rounds"] = [{k: r[k] for k in ("prefill_ms", "decode_tok_s")} for r in results]
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="measurements per round (medians)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (medians)")
    parser.add_argument("--worker", choices=("ours", "llama"), help=argparse.SUPPRESS)
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        measure = ours_inprocess if args.worker == "ours" else partial(llama_cpp_inprocess, GGUF)
        print(json.dumps(measure(json.loads(args.prompt), args.tokens, args.threads, args.runs)))
        return
    prompt = render_chat_tokens(GGUF, chat_messages())
    print(
        f"prompt: {len(prompt)} tokens (chat template); {args.tokens} greedy tokens; {args.threads} threads; "
        f"{args.rounds} alternating rounds of {args.runs} runs"
    )
    mine: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        pair = [("ours", mine), ("llama", others)]
        for kind, into in pair if round_ % 2 == 0 else pair[::-1]:
            into.append(_worker(kind, prompt, args.tokens, args.threads, args.runs))
        first, second = (ours_server, theirs_server) if round_ % 2 == 0 else (theirs_server, ours_server)
        for serve in (first, second):
            kind = "ours" if serve is ours_server else "llama"
            paired = partial(_alone, kind, prompt, args.tokens, args.threads)
            (servers if serve is ours_server else baselines).append(
                serve(args.threads, args.tokens, args.runs, paired)
            )
    ours, theirs = _pooled(mine), _pooled(others)
    same = sum(a == b for a, b in zip(ours["tokens"], theirs["tokens"], strict=False))
    served = {k: (round(float(statistics.median(r[k] for r in servers)), 1) if k != "texts_identical" else
                  all(r[k] for r in servers)) for k in servers[0]}  # fmt: skip
    baseline = {k: (round(float(statistics.median(r[k] for r in baselines)), 1) if k != "texts_identical" else
                    all(r[k] for r in baselines)) for k in baselines[0]}  # fmt: skip

    print(f"\n  {'':<46} {'verinfer':>9} {'llama.cpp':>11} {'ratio':>8}")
    print(_line("in-process prefill, ms (lower is better)", ours["prefill_ms"], theirs["prefill_ms"], ">= 2x",
                higher_better=False))  # fmt: skip
    print(_line("in-process decode, tokens/s", ours["decode_tok_s"], theirs["decode_tok_s"], ">= 1.1x"))
    print(_line("1 stream over HTTP+SSE (openai client), tok/s", served["single_decode_tok_s"],
                baseline["single_decode_tok_s"], "(ours with receipts)"))  # fmt: skip
    print(_line("1 stream over HTTP+SSE (plain SSE reader), tok/s", served["single_plain_decode_tok_s"],
                baseline["single_plain_decode_tok_s"], "(ours with receipts)"))  # fmt: skip
    print(_line("4 streams at once, aggregate tokens/s", served["quad_aggregate_tok_s"],
                baseline["quad_aggregate_tok_s"], ">= 1.5x vs llama-server --parallel 4"))  # fmt: skip
    print(_line("4 streams: worst time to first token, ms", served["quad_worst_ttft_ms"],
                baseline["quad_worst_ttft_ms"], "<= llama-server's", higher_better=False))  # fmt: skip
    print(
        "\n  HTTP+SSE with receipts vs in-process decode, each stream against an in-process run made just"
        f" before it:\n    {served['single_plain_loss_pct']:+.1f}% below with a plain SSE reader"
        f" (goal <= 5%; llama-server against llama-cpp-python: {baseline['single_plain_loss_pct']:+.1f}%);"
        f"\n    {served['single_loss_pct']:+.1f}% through the openai client, whose per-chunk parsing shares"
        f" the 2 cores (llama-server: {baseline['single_loss_pct']:+.1f}%)"
    )
    print(
        f"  server RSS with the LLM loaded: {served['rss_mib']} MiB "
        f"(peak {served['peak_rss_mib']}; goal <= 400)"
    )
    print(f"  greedy tokens equal to llama.cpp's: {same}/{args.tokens} "
          f"(int8 activations in both, rounded differently); ours deterministic: {ours['deterministic']}, "
          f"4 streams give the same text as 1: {served['texts_identical']}")  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    record = {"args": vars(args), "ours_inprocess": ours, "llama_cpp_inprocess": theirs,
              "ours_server": served, "llama_server": baseline}  # fmt: skip
    RESULTS.write_text(json.dumps(record, indent=2))
    print(f"\n  all figures: {RESULTS}")


if __name__ == "__main__":
    main()
