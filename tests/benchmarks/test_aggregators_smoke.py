"""benchmarks/aggregators.py still runs (smoke size: tiny generated MNIST files, one round); no result is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_aggregators_benchmark_smoke():
    record = run_smoke("aggregators.py")
    assert record["benchmark"] == "aggregators"
    assert {(r["algorithm"], r["partition"]) for r in record["results"]} >= {("FedAvg", "shards (2 per worker)")}
    assert all(len(r["val_acc"]) == 1 for r in record["results"])
