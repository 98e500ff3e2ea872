"""benchmarks.common's helpers that decide when and how contenders run."""

from __future__ import annotations

import itertools

import pytest

import lightning_fed.backends.threads as threads
from benchmarks import common


def _busy_then_quiet(monkeypatch: pytest.MonkeyPatch, busy_windows: int) -> None:
    """A machine whose other processes keep 1.5 cores busy for ``busy_windows`` windows, then none; no real sleep."""
    clock = itertools.count()
    now = {"t": 0.0}
    total = {"busy": 0.0}

    def busy_seconds() -> float:
        return total["busy"]

    def sleep(seconds: float) -> None:
        window = next(clock)
        now["t"] += seconds
        total["busy"] += (1.5 if window < busy_windows else 0.0) * seconds

    monkeypatch.setattr(threads, "machine_busy_seconds", busy_seconds)
    monkeypatch.setattr(common.time, "sleep", sleep)
    monkeypatch.setattr(common.time, "monotonic", lambda: now["t"])


def test_wait_until_quiet_waits_out_a_busy_spell():
    with pytest.MonkeyPatch.context() as mp:
        _busy_then_quiet(mp, busy_windows=3)
        waited = common.wait_until_quiet(max_busy=0.3, window_s=0.5, timeout_s=15.0)
    assert waited == pytest.approx(2.0)  # three busy windows, then the quiet one


def test_wait_until_quiet_gives_up_at_its_timeout():
    with pytest.MonkeyPatch.context() as mp:
        _busy_then_quiet(mp, busy_windows=1000)
        waited = common.wait_until_quiet(max_busy=0.3, window_s=0.5, timeout_s=3.0)
    assert waited == pytest.approx(3.0)


def test_wait_until_quiet_returns_at_once_without_proc_stat(monkeypatch):
    monkeypatch.setattr(threads, "machine_busy_seconds", lambda: None)
    assert common.wait_until_quiet(timeout_s=5.0) < 0.5


def test_median_interval_covers_at_least_the_level_and_widens_with_it():
    values = [float(v) for v in range(20)]
    low, high = common.median_interval(values, 0.95)
    assert (low, high) == (5.0, 14.0)  # the 6th and 15th smallest of 20: 95.9% coverage
    assert common.median_interval(values, 0.99)[0] < low  # more confidence, a wider interval
    assert common.median_interval(values[:5]) is None  # five repeats cannot give 95%
    assert "ci95" in common.ratios([2.0] * 6, [1.0] * 6) and "ci95" not in common.ratios([2.0] * 5, [1.0] * 5)


def test_host_speed_reports_the_best_repeat_in_microseconds_and_gflops(monkeypatch):
    """With a fake clock: the small op's time is the fastest repeat over its calls, and bmm's rate is its flops (2 x
    10 x 10 x 784 x 200 = 31.36 MFLOP a call) over the fastest repeat's time per call."""
    timings = iter([9_000_000, 6_000_000, 8_000_000, 4_000_000, 3_136_000, 5_000_000])

    def fake_loop(fn, iters):
        return next(timings)

    monkeypatch.setattr(common, "time_loop_ns", fake_loop)
    monkeypatch.setattr(common.torch, "bmm", lambda *args, **kwargs: None)
    speed = common.host_speed(repeats=3)
    assert speed == {"small_op_us": 3.0, "bmm_gflops": 200.0}  # 6 ms / 2000 calls; 31.36 MFLOP / 156.8 µs
    assert common.host_speed_text(speed) == "host speed: small op 3.00 µs, bmm 200.0 GFLOP/s"
    assert common.host_speed_text(None) == "host speed: not measured"


def test_machine_info_measures_the_host_now():
    speed = common.machine_info()["host_speed"]
    assert speed["small_op_us"] > 0 and speed["bmm_gflops"] > 0
