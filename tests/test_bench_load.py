"""bench/bench_load.py runs end to end (tiny load), so the issue-13 benchmark cannot rot unnoticed."""

from __future__ import annotations

import pytest

from bench import bench_load


def test_the_load_benchmark_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    bench_load.main(40, ["iris-ols"], [], False)  # the verdict is noise at this size; the tables are not
    printed = capsys.readouterr().out
    assert "outputs identical" in printed or "outputs agree" in printed
    assert "unsigned FastAPI, c=16" in printed and "signed /infer, c=16" in printed
    assert "iris-ols" in printed.split("goals:")[1]
