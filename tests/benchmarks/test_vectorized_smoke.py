"""benchmarks/vectorized.py still runs (smoke size: synthetic data, one round); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_vectorized_benchmark_smoke():
    record = run_smoke("vectorized.py")
    assert record["benchmark"] == "vectorized"
    assert set(record["times"]) == {"plain", "sequential", "vectorized"}
    assert float(record["max_abs_diff"]) < 1e-5  # the strategies trained the same model
    assert [s["workers_per_round"] for s in record["scaling"]] == [2, 4]
