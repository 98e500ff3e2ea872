"""benchmarks/scale_out.py still runs (smoke size, 2 processes over Gloo); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_scale_out_benchmark_smoke():
    record = run_smoke("scale_out.py")
    assert record["benchmark"] == "scale_out" and record["config"]["smoke"] is True
    assert set(record["comparison"]) == {"1 process x 2 threads", "2 processes x 1 thread", "1 process x 1 thread"}
    two = record["comparison"]["2 processes x 1 thread"]
    assert two["processes"] == 2 and two["threads_per_process"] == 1
    assert {"min", "median", "max"} <= two["round_s"].keys()
    # the two processes trained the model one process trains (a correctness check, not a timing)
    assert two["max_param_diff_vs_1x2"] < 1e-5
    assert [entry["workers"] for entry in record["sweep"]] == [2]
