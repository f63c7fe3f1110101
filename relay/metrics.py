"""A relay worker's Prometheus metrics (`verinfer relay run --metrics-port N`: GET /metrics on 127.0.0.1:N).

Its own registry, so that several relays in one process (the tests) do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class RelayMetrics:
    def __init__(self, worker: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.worker = Gauge(
            "verinfer_relay_worker_info", "This worker's relay address", ["worker"], registry=r
        )
        self.worker.labels(worker=worker).set(1)
        self.claims = Counter(
            "verinfer_relay_claims", "Requests this worker claimed (not counting lease renewals)", registry=r
        )
        self.takeovers = Counter(
            "verinfer_relay_lease_takeovers",
            "Requests claimed from another worker whose lease had run out",
            registry=r,
        )
        self.lost_claims = Counter(
            "verinfer_relay_lost_claims",
            "Fulfilments not sent because another worker had taken the request over",
            registry=r,
        )
        self.foreign_rebroadcasts = Counter(
            "verinfer_relay_foreign_rebroadcasts",
            "Another worker's signed fulfil or anchor re-broadcast as is by this worker",
            registry=r,
        )
        self.foreign_dead = Counter(
            "verinfer_relay_foreign_transactions_dead",
            "Another worker's transactions found dead (its nonce used otherwise, or never signed)",
            registry=r,
        )
        self.submitted = Counter(
            "verinfer_relay_fulfilments_submitted", "Fulfil transactions this worker signed", registry=r
        )
        self.leader = Gauge("verinfer_relay_leader", "1 while this worker leads the fleet", registry=r)
        self.leaderships = Counter(
            "verinfer_relay_leaderships", "Times this worker became the leader", registry=r
        )
        self.lag = Gauge(
            "verinfer_relay_lag_blocks", "Chain head minus the fleet's last scanned block", registry=r
        )
        self.claimed = Gauge(
            "verinfer_relay_claimed_requests", "Requests claimed in this worker's last step", registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
