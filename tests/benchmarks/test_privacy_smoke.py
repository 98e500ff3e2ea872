"""benchmarks/privacy.py still runs (smoke size: synthetic data, two steps per school); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_privacy_benchmark_smoke():
    record = run_smoke("privacy.py")
    assert record["benchmark"] == "privacy"
    assert set(record["times"]) == {"non-private", "DP-SGD (auto)"}  # one contender per --modes (default: auto)
    assert record["ratio"]["auto"]["median"] > 0
