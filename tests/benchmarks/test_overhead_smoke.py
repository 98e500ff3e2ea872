"""benchmarks/overhead.py still runs (smoke size); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_overhead_benchmark_smoke():
    record = run_smoke("overhead.py")
    assert record["benchmark"] == "overhead" and record["mode"] == "speed"
    assert {"tiny_mlp_follow_ratio", "tiny_mlp_fedavg_ratio", "tiny_mlp_central_ms_per_step"} <= record.keys()
