"""benchmarks/mcmahan.py still runs (smoke size: tiny generated MNIST files, 2 rounds); no accuracy is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_mcmahan_benchmark_smoke():
    record = run_smoke("mcmahan.py")
    assert record["benchmark"] == "mcmahan"
    assert record["result"]["rounds_run"] == 2
    assert [h["round"] for h in record["history"]] == [1, 2]
