"""Prometheus metrics on a registry of the service's own (no process-global state between app instances)."""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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
