"""benchmarks/privacy.py still runs (smoke size: synthetic data, two steps per school); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_privacy_benchmark_smoke():
    record = run_smoke("privacy.py")
    assert record["benchmark"] == "privacy"
    assert set(record["times"]) == {"non-private", "DP-SGD (auto)"}  # one contender per --modes (default: auto)
    assert record["ratio"]["auto"]["median"] > 0


def test_privacy_benchmark_times_opacus_own_ratio_beside_when_asked_in_channels_last_too():
    import json
    import subprocess
    import sys

    from tests.benchmarks.test_smoke import ROOT

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "privacy.py"), "--smoke", "--opacus", "ghost", "hooks",
         "--channels-last"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(record["times"]) == {
        "non-private", "DP-SGD (auto)", "plain loop", "plain loop, Opacus (ghost)", "plain loop, Opacus (hooks)",
    }  # fmt: skip
    assert set(record["opacus_ratio"]) == {"ghost", "hooks"}
    assert all(r["median"] > 0 for r in record["opacus_ratio"].values())
    assert "for reference, Opacus (ghost) / the same plain loop without privacy" in proc.stdout
    assert record["config"]["channels_last"] and "Opacus' MNIST CNN, channels last" in proc.stdout
