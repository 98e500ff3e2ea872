"""The benchmarks still run: each one's ``--smoke`` mode exits 0 and ends with its JSON line. No timing is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(script: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} --smoke printed nothing"
    return json.loads(lines[-1])


def test_pointer_benchmark_smoke():
    record = run_smoke("pointer.py")
    assert record["benchmark"] == "pointer"
    assert {"machine", "config", "ops", "train", "rss_mib"} <= record.keys()
    assert record["config"]["smoke"] is True
    assert {"cpu_model", "cores", "torch", "torch_threads"} <= record["machine"].keys()
    expected_ops = {
        "a + b",
        "torch.matmul",
        "F.relu",
        "add_ (in place)",
        "p.shape",
        "send + get",
        "model.send + model.get",
    }
    assert set(record["ops"]) == expected_ops
    for op in record["ops"].values():
        assert {"ptr_us", "plain_us", "overhead_us"} <= op.keys()
    train = record["train"]
    assert {
        "step_ms",
        "ratio",
        "resident_ratio",
        "goal_ratio",
        "meets_goal",
        "messages_per_step",
        "split_ms_per_step",
    } <= train.keys()
    assert {"min", "median", "max"} <= train["ratio"].keys()
    assert {"plain", "fed", "resident", "sendget"} <= train["step_ms"].keys()
    # the federated loop trained the same weights as plain PyTorch (a correctness check, not a timing)
    assert train["max_param_diff_fed_vs_plain"] < 1e-5
    for key in ("page_faults_per_step", "system_ms_per_step"):  # each timed loop's allocator cost, per repeat
        assert set(train[key]) == {"plain", "fed"} and all(v["min"] >= 0 for v in train[key].values())
    blocks = train["alternating_blocks"]
    assert blocks["block"] == 3 and blocks["pairs"] == 1 and blocks["ratio_of_sums"] > 0  # smoke: 2 steps, one pass


def test_deployment_benchmark_smoke():
    record = run_smoke("deployment.py")
    assert record["benchmark"] == "deployment" and record["sites"] == 2
    # one round: the seed CNN's parameters (about 1.2 M float32: 4.6 MiB) each way, plus a small header
    assert 4.5 * 2**20 < record["bytes_to_site_per_round"] < 4.7 * 2**20
    assert 4.5 * 2**20 < record["bytes_from_site_per_round"] < 4.7 * 2**20
