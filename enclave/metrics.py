"""Prometheus metrics on a registry of the service's own (no process-global state between app instances)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

if TYPE_CHECKING:
    from .llm_service import LlmService, Piece, Plan

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
RATE_BUCKETS = (5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 200.0, 300.0)
# Whole requests, from the first byte of the request at the edge to its answer: from a 50 us health check
# to a long completion stream.
HTTP_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "verinfer_requests",
            "Requests served, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.inferences = Counter(
            "verinfer_inferences", "Signed inferences, by model.", ["model"], registry=self.registry
        )
        self.latency = Histogram(
            "verinfer_inference_seconds",
            "Time from parsed request to signed receipt, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "verinfer_errors", "Refused requests, by error code.", ["code"], registry=self.registry
        )
        self.info = Gauge(
            "verinfer_enclave_info",
            "Constant 1, labelled with the enclave identity.",
            ["enclave", "simulated"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "verinfer_http_request_duration_seconds",
            "Whole requests at the HTTP edge (body read, handler, answer sent), by endpoint.",
            ["endpoint"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.inference_in_flight = Gauge(
            "verinfer_inference_requests_in_flight",
            "Inference requests received (headers read) and not yet answered.",
            registry=self.registry,
        )
        # What prometheus_client puts on its global registry, on ours: CPU, memory, open fds, start time, GC.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # labels() costs a few microseconds per call; children are fixed per label set, so look each up once.
    @cache  # noqa: B019 - one Metrics per app, kept for its lifetime
    def request_counter(self, endpoint: str, status: int) -> Counter:
        return self.requests.labels(endpoint=endpoint, status=str(status))

    @cache  # noqa: B019
    def model_series(self, model: str) -> tuple[Histogram, Counter]:
        """(latency histogram, inference counter) of one model, looked up together once."""
        return self.latency.labels(model=model), self.inferences.labels(model=model)

    @cache  # noqa: B019
    def error_counter(self, code: str) -> Counter:
        return self.errors.labels(code=code)

    @cache  # noqa: B019
    def request_histogram(self, endpoint: str) -> Histogram:
        return self.request_seconds.labels(endpoint=endpoint)

    def observe_request(self, endpoint: str, seconds: float) -> None:
        """One answered request's whole duration; `endpoint` is the same label as the request counter's."""
        self.request_histogram(endpoint).observe(seconds)


def observe_llm(metrics: Metrics, llm: LlmService) -> None:
    """LLM series: tokens (rate() of the counters is tokens/s), time to first token, queue depth."""
    registry = metrics.registry
    engine = llm.engine
    Gauge("verinfer_llm_queue_depth", "Requests waiting for a batch slot.", registry=registry).set_function(
        lambda: engine.stats().queued
    )
    Gauge("verinfer_llm_active_sequences", "Sequences in the running batch.", registry=registry).set_function(
        lambda: engine.stats().active
    )
    Gauge(
        "verinfer_llm_generated_tokens",
        "Tokens generated since start (rate() = tokens/s).",
        registry=registry,
    ).set_function(lambda: engine.stats().generated_tokens_total)
    completions = Counter(
        "verinfer_llm_completions",
        "Signed completions, by finish reason.",
        ["finish_reason"],
        registry=registry,
    )
    ttft = Histogram(
        "verinfer_llm_time_to_first_token_seconds",
        "From accepted request to its first generated token.",
        buckets=TTFT_BUCKETS,
        registry=registry,
    )
    rate = Histogram(
        "verinfer_llm_decode_tokens_per_second",
        "Decode speed of each completion (tokens after the first / time after the first).",
        buckets=RATE_BUCKETS,
        registry=registry,
    )

    def finished(plan: Plan, piece: Piece, seconds: float, first_token_s: float | None) -> None:
        completions.labels(finish_reason=piece.finish or "unknown").inc()
        if first_token_s is not None:
            ttft.observe(first_token_s)
            if piece.tokens > 1 and seconds > first_token_s:
                rate.observe((piece.tokens - 1) / (seconds - first_token_s))

    llm.on_finished = finished
