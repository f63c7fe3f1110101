"""A short schemathesis run over the whole OpenAPI schema (the long one: `python -m bench.api_fuzz`)."""

from __future__ import annotations

from bench.api_fuzz import run, status_counts


def test_no_5xx_over_the_whole_schema() -> None:
    assert run(max_examples=25, seed=1) == 0


def test_status_counting_sees_5xx() -> None:
    metrics = (
        'verinfer_requests_total{endpoint="infer",status="200"} 7.0\n'
        'verinfer_requests_total{endpoint="infer",status="500"} 2.0\n'
        'verinfer_requests_total{endpoint="models",status="500"} 1.0\n'
    )
    assert status_counts(metrics) == {200: 7.0, 500: 3.0}
