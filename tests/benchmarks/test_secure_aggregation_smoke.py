"""benchmarks/secure_aggregation.py still runs (smoke size); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_secure_aggregation_benchmark_smoke():
    record = run_smoke("secure_aggregation.py")
    assert record["benchmark"] == "secure_aggregation"
    assert len(record["plain_s_per_round"]) == len(record["secure_s_per_round"]) == 1
