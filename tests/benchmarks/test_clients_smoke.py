"""benchmarks/clients.py still runs (smoke size); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_clients_benchmark_smoke():
    record = run_smoke("clients.py")
    assert record["benchmark"] == "clients"
    assert [r["workers"] for r in record["results"]] == [2, 20]
