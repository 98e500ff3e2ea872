"""Helpers shared by the benchmarks: machine description, timing, interleaved repeats, tables, JSON lines, RSS.

Timings on a shared machine are noisy, so benchmarks compare contenders *within one run*: every repeat times each
contender once, in alternating order (A B, then B A, ...), and the reported ratio is the median of the per-repeat
ratios, with its minimum and maximum.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils.data


# -- the machine ---------------------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    """Total memory in GiB, from ``/proc/meminfo``."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def rss_mib() -> float | None:
    """This process's resident set size in MiB (``VmRSS`` from ``/proc/self/status``)."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers: CPU, cores, RAM, torch, threads, load, date."""
    load = load_average()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_avg": [round(x, 2) for x in load] if load else None,
        "host_speed": host_speed(),
    }


def host_speed(repeats: int = 5) -> dict[str, float]:
    """How fast this host runs, now, the two kinds of work the benchmarks time (about 0.2 s; the best of
    ``repeats``, so a momentary stall does not count):

    - ``small_op_us``: microseconds for one ``x + y`` of two 10-element tensors: Python and torch's dispatch, which
      the pointer layer and the per-step framework code spend their time in;
    - ``bmm_gflops``: GFLOP/s of ``torch.bmm`` of the 2NN's first layer for 10 workers at batch 10
      (``10 x 10 x 784`` by ``10 x 784 x 200``, into a kept output): the vectorized step's arithmetic.

    A shared host's speed changes from hour to hour by more than any change in this project; two runs compare only
    where these agree. Example:

        >>> sorted(host_speed(repeats=1))
        ['bmm_gflops', 'small_op_us']
    """
    x, y = torch.randn(10), torch.randn(10)
    ops = 2000
    small = min(time_loop_ns(lambda: x + y, ops) for _ in range(repeats)) / ops / 1e3
    a, b = torch.randn(10, 10, 784), torch.randn(10, 784, 200)
    out = torch.empty(10, 10, 200)
    calls = 20
    torch.bmm(a, b, out=out)
    best = min(time_loop_ns(lambda: torch.bmm(a, b, out=out), calls) for _ in range(repeats)) / calls / 1e9
    return {"small_op_us": round(small, 3), "bmm_gflops": round(2 * 10 * 10 * 784 * 200 / best / 1e9, 1)}


def host_speed_text(speed: dict[str, float] | None) -> str:
    """``host_speed()`` in words, for a benchmark's header line."""
    if not speed:
        return "host speed: not measured"
    return f"host speed: small op {speed['small_op_us']:.2f} µs, bmm {speed['bmm_gflops']:.1f} GFLOP/s"


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"# {info['date']}  cpu: {info['cpu_model']}  cores: {info['cores']}  ram: {info['ram_gib']} GiB  "
        f"python {info['python']}  torch {info['torch']}  threads: {info['torch_threads']}  "
        f"load avg: {info['load_avg']}  {host_speed_text(info.get('host_speed'))}"
    )


# -- timing --------------------------------------------------------------------------------------------------------
def wait_until_quiet(max_busy: float = 0.3, window_s: float = 0.5, timeout_s: float = 15.0) -> float:
    """Sleep until other processes keep at most ``max_busy`` cores busy over a ``window_s`` window (this process
    sleeps through it, so all the busy time is theirs), at most ``timeout_s``; return the seconds waited.

    A contender that starts while the previous one's processes wind down (Ray's, after Flower) would pay for them,
    and ``num_threads="auto"`` would see the cores busy. The measure is "auto"'s own
    (:func:`lightning_fed.backends.threads.busy_elsewhere`). Without ``/proc/stat`` this returns at once.
    """
    from lightning_fed.backends.threads import busy_elsewhere, cpu_snapshot

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = cpu_snapshot()
        if before is None:
            break
        time.sleep(window_s)
        after = cpu_snapshot()
        busy = None if after is None else busy_elsewhere(before, after)
        if busy is None or busy <= max_busy:
            break
    return time.monotonic() - start


def time_loop_ns(fn: Callable[[], Any], iters: int) -> int:
    """Nanoseconds for ``iters`` calls of ``fn`` (``time.perf_counter_ns``)."""
    start = time.perf_counter_ns()
    for _ in range(iters):
        fn()
    return time.perf_counter_ns() - start


def time_once_s(fn: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e9


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each contender once per repeat, alternating the order every repeat; return ``name -> [result...]``.

    Each contender returns its own measurement (seconds, or µs/op). Repeat ``r`` runs them forwards when ``r`` is
    even and backwards when odd, so a slow spell on the machine hits all contenders alike.
    """
    names = list(contenders)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(contenders[name]())
    return results


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``, taken as independent repeats (order
    statistics: the true median lies below the j-th smallest value with Binomial(n, 1/2) probability), at least
    ``level``; ``None`` when there are too few values for that level (fewer than 6 for 95%). A machine that drifts
    during the run makes repeats less independent than this assumes.

    Example:
        >>> median_interval(list(range(1, 16)))  # 15 repeats: the 4th and 12th smallest (96.5% coverage)
        (4, 12)
        >>> median_interval([1.0, 2.0, 3.0]) is None
        True
    """
    n = len(values)
    ordered = sorted(values)
    below = 0.0  # P(Binomial(n, 1/2) < j), j = 0, 1, ...
    for j in range(n // 2 + 1):
        p_j = math.comb(n, j) / 2**n
        if 1 - 2 * (below + p_j) < level:  # taking the (j+1)-th value would cover less than ``level``
            return (ordered[j - 1], ordered[n - j]) if j > 0 else None
        below += p_j
    return None


def median_summary(values: Sequence[float]) -> dict[str, Any]:
    """:func:`summary`, and a 95% confidence interval for the median (``ci95``, from 6 values on: see
    :func:`median_interval`)."""
    out: dict[str, Any] = summary(values)
    interval = median_interval(values)
    if interval is not None:
        out["ci95"] = list(interval)
    return out


def interval_text(stats: dict[str, Any], digits: int = 3) -> str:
    """``"; 95% confidence interval of the median a-b"`` for a :func:`median_summary` that has one, else ``""``."""
    ci = stats.get("ci95")
    return f"; 95% confidence interval of the median {ci[0]:.{digits}f}-{ci[1]:.{digits}f}" if ci else ""


def ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """:func:`median_summary` of the per-repeat ratios ``num[i] / den[i]``."""
    return median_summary([a / b for a, b in zip(num, den, strict=True)])


def differences(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """min/median/max of the per-repeat differences ``num[i] - den[i]``."""
    return summary([a - b for a, b in zip(num, den, strict=True)])


# -- output --------------------------------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return "—" if value is None else str(value)


def _rounded(obj: Any, digits: int = 4) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def print_json_line(record: dict[str, Any]) -> None:
    """Print ``record`` as the single last line of output (floats rounded), and flush."""
    sys.stdout.flush()
    print(json.dumps(_rounded(record), sort_keys=False), flush=True)


# -- data -----------------------------------------------------------------------------------------------------------
def mnist_like(root: str | None, n: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """The first ``n`` real MNIST training images, normalised as the seed does, read offline from
    ``root/MNIST/raw``; with ``root=None``, ``n`` synthetic MNIST-shaped images and labels (``seed``): speed does not
    depend on the pixels."""
    if root:
        from torchvision.datasets import MNIST

        from lightning_fed.datasets import MNIST_MEAN, MNIST_STD

        mnist = MNIST(root, train=True, download=True)
        images = ((mnist.data[:n].float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
        return torch.utils.data.TensorDataset(images, mnist.targets[:n].clone())
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 28, 28, generator=g)
    return torch.utils.data.TensorDataset(images, torch.randint(0, 10, (n,), generator=g))
