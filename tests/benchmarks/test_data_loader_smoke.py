"""``benchmarks/data_loader.py --smoke`` exits 0 and ends with its JSON line. No timing is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_data_loader_benchmark_smoke():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_loader.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"data_loader.py --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "data_loader"
    assert {"machine", "config", "seconds", "ratio", "goal_ratio", "meets_goal", "load_avg_end", "rss"} <= set(record)
    assert record["config"]["smoke"] is True and record["config"]["data"] == "synthetic"
    assert set(record["seconds"]) == {"federated", "plain"}
    assert {"min", "median", "max"} <= set(record["ratio"])
    rss = record["rss"]
    assert rss["epochs"] == 3 and rss["store_objects"] == [2]  # only the two shards left after each epoch
    assert "## one epoch:" in proc.stdout and "federated/plain = " in proc.stdout
