"""benchmarks/flower.py still runs (smoke size); no timing is checked.

CI's venv has no ``flwr``: there the Flower contender is left out with a note, and lightning_fed and plain still run.
"""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_flower_benchmark_smoke():
    record = run_smoke("flower.py")
    assert record["benchmark"] == "flower"
    assert {"machine", "config", "contenders", "workloads"} <= record.keys()
    assert record["config"]["smoke"] is True
    assert {"lightning_fed", "lightning_fed_vectorized", "plain"} <= set(record["contenders"])
    assert ("flower" in record["contenders"]) == (record["flwr"] is not None)
    assert set(record["workloads"]) == {"A", "B"}
    for workload in record["workloads"].values():
        results = workload["results"]
        assert set(results) == set(record["contenders"])
        for name in ("lightning_fed", "plain"):
            assert results[name]["wall_s"] > 0
            assert 0.0 <= results[name]["test_acc"] <= 1.0
        assert {"min", "median", "max"} <= workload["ratios"]["lightning_fed/plain"].keys()
        # every contender trained the same clients each round
        assert len(workload["schedule"]) == workload["workload"]["rounds"]
