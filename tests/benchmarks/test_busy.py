"""benchmarks/busy.py, the second CPU-bound job of the "under load" runs: it runs, stops at SIGTERM and says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.busy import busy_loop, main  # noqa: E402


def test_busy_loop_counts_products_and_obeys_stop():
    assert busy_loop(threads=1, seconds=0.05, size=8) > 0
    assert busy_loop(threads=1, seconds=60.0, size=8, stop=lambda: True) == 0


def test_sigterm_stops_the_job_with_its_json_line():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "busy.py"), "--threads", "1", "--seconds", "60", "--size", "16"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3.0)  # torch's import
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    record = json.loads(out.strip().splitlines()[-1])
    assert record["benchmark"] == "busy" and record["threads"] == 1
    assert record["seconds"] < 60 and record["matmuls"] >= 0


def test_bad_thread_count_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "0"])
    assert exc.value.code == 2
    assert "--threads: must be positive, got '0'" in capsys.readouterr().err
