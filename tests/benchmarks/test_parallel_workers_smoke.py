"""benchmarks/parallel_workers.py still runs (smoke size: 2 steps, 2 repeats, the 2NN); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_parallel_workers_benchmark_smoke():
    record = run_smoke("parallel_workers.py")
    assert record["benchmark"] == "parallel_workers"
    result = record["results"]["mcmahan_2nn"]
    assert set(result["ms_per_step_fastest"]) == {"sequential", "threads", "sequential_1t"}
    assert all(len(v) == 2 for v in result["times_s"].values())
