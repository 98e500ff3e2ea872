"""Torch's intra-op thread count from the cores the machine has free: ``FederatedStrategy(num_threads="auto")``.

OpenMP threads on cores another job keeps busy multiply a step's cost (2 cores shared with a 2-thread job: FedAvg
rounds took 3.4x to 30x as long with torch's 2 threads as with 1). So by default the strategy measures how many cores
*other* processes keep busy (the machine's busy CPU time less this process's own, over the wall time) and gives torch
the cores left, never more than it had: at fit start over 0.1 s while this process waits (skipped where no other
process has a thread runnable in a few looks at ``/proc/loadavg``), then at each round's start over the interval
since the last check::

    busy = (machine busy seconds - own busy seconds) / wall seconds     # /proc/stat and os.times()
    threads = max(1, min(usable, round(usable - busy)))                  # usable: this process's CPU affinity

Without ``/proc/stat`` (macOS, Windows), the 1-minute load average less one core (this process) stands in.

Example:
    >>> [pick_threads(usable=2, busy=b) for b in (1.0, 0.2, 3.0)]
    [1, 2, 1]
    >>> before = CpuSnapshot(machine=10.0, own=1.0, wall=100.0)
    >>> busy_elsewhere(before, CpuSnapshot(machine=12.0, own=2.0, wall=101.0))   # 2 cores busy, 1 of them ours
    1.0
    >>> busy_elsewhere(before, CpuSnapshot(machine=10.1, own=1.0, wall=100.01)) is None   # too short to tell
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import info

MIN_INTERVAL_S = 0.05  # shorter intervals measure the jiffies' rounding, not the load
START_WINDOW_S = 0.1  # "auto"'s first look at the load, at fit start, before anything runs with torch's count
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CpuSnapshot(NamedTuple):
    """CPU seconds the machine (``machine``) and this process (``own``) have been busy, at ``wall`` (monotonic)."""

    machine: float
    own: float
    wall: float


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds the machine has been busy since boot (``/proc/stat``'s ``cpu`` line); ``None``: unreadable."""
    try:
        with open(path) as stat:
            line = stat.readline()
        user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in line.split()[1:9]] + [0] * 8)[:8]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    return (user + nice + system + irq + softirq + steal) / ticks if line.startswith("cpu ") and ticks > 0 else None


def cpu_snapshot() -> CpuSnapshot | None:
    """The machine's and this process's busy CPU time now; ``None`` without ``/proc/stat``."""
    machine, times = machine_busy_seconds(), os.times()
    return None if machine is None else CpuSnapshot(machine, times.user + times.system, time.monotonic())


def busy_elsewhere(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """Cores other processes kept busy on average between two snapshots (``None``: under 0.05 s apart)."""
    wall = after.wall - before.wall
    if wall < MIN_INTERVAL_S:
        return None
    return max(0.0, ((after.machine - before.machine) - (after.own - before.own)) / wall)


def others_runnable(looks: int = 5, gap_s: float = 0.002, path: str = "/proc/loadavg") -> int | None:
    """The fewest threads of other processes the kernel had runnable in ``looks`` looks ``gap_s`` apart (``/proc/
    loadavg``'s running count, less this reading thread); ``None``: unreadable. A CPU-bound job is runnable in every
    look, a passing one is not: 0 means no other job needs a core now."""
    fewest: int | None = None
    for look in range(looks):
        try:
            with open(path) as loadavg:
                running = int(loadavg.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        fewest = running - 1 if fewest is None else min(fewest, running - 1)
        if fewest <= 0:
            return 0
        if look < looks - 1:
            time.sleep(gap_s)
    return fewest


def measured_busy(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """:func:`busy_elsewhere` between two snapshots, or the load average where ``/proc/stat`` is missing."""
    return loadavg_busy() if before is None or after is None else busy_elsewhere(before, after)


def loadavg_busy() -> float | None:
    """Without ``/proc/stat``: the 1-minute load average less this process's one core (``None``: no load average)."""
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):
        return None


def pick_threads(usable: int, busy: float) -> int:
    """The cores left to this process when others keep ``busy`` of its ``usable`` ones busy (at least 1)."""
    return max(1, min(usable, int(usable - busy + 0.5)))


def check_num_threads(value: Any) -> int | str | None:
    """``num_threads`` is ``"auto"``, an integer >= 1 or ``None``; returns it."""
    if value is None or (isinstance(value, str) and value == "auto") or (type(value) is int and value >= 1):
        return value  # a bool is not a count
    raise FederatedConfigError(
        f"`num_threads={value!r}` is not valid: pass 'auto' (torch's thread count from the cores other processes "
        "leave free, checked every round), an integer >= 1 (that many torch threads during fit) or None (leave "
        "torch's thread count alone)."
    )


def auto_blocker(env: Mapping[str, str], threads: int, defaults: set[int], deterministic: bool) -> str | None:
    """Why "auto" must leave torch's count alone (``None``: it may choose): the user chose it (an environment
    variable; ``threads`` not among the counts torch picks by itself, ``defaults``), or deterministic algorithms."""
    for name in THREAD_ENV:
        if env.get(name):
            return f"{name}={env[name]} is set"
    if threads not in defaults:
        return f"torch.set_num_threads({threads}) was called"
    return "deterministic algorithms are on: the results must not depend on the load" if deterministic else None


class ThreadGovernor:
    """Torch's intra-op thread count during fit (see the module docstring): :meth:`start` at the strategy's setup,
    :meth:`round_start` at each round's start, :meth:`stop` at teardown (torch's count from before ``start`` again).

    ``setting``: ``"auto"``, a count, or ``None`` (leave torch alone). "auto" respects the user's choice: it does
    nothing where ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set, where torch's count is not one torch picks itself
    (the usable CPUs, or its inter-op pool's size, sized alike), or under ``Trainer(deterministic=True)`` (the count
    changes how reductions round: results would depend on the load). ``torch.set_num_threads(n)`` with torch's default
    ``n`` cannot be told from the default: "auto" stays in control (pass ``num_threads=n`` or ``None`` instead).

    Example:
        >>> governor = ThreadGovernor(1)
        >>> before = torch.get_num_threads(); governor.start(); torch.get_num_threads()
        1
        >>> governor.stop(); torch.get_num_threads() == before
        True
    """

    def __init__(self, setting: int | str | None = "auto") -> None:
        self.setting = check_num_threads(setting)
        self.changes: list[tuple[int, int, float]] = []  # (round index, threads set, cores busy elsewhere)
        self.blocker: str | None = None  # why "auto" leaves torch alone in this fit
        self._original: int | None = None  # torch's count before start (None: nothing to restore)
        self._ceiling = 1
        self._last: CpuSnapshot | None = None
        self._pending: tuple[int, float] | None = None  # the start's change, recorded at the first round's index

    def start(self) -> None:
        """Fit starts: a count applies now; "auto" checks it may act, then sets the count from a first look."""
        self.changes, self.blocker, self._pending = [], None, None
        if self.setting is None:
            return
        current = torch.get_num_threads()
        if self.setting == "auto":
            defaults = {usable_cpus(), torch.get_num_interop_threads()}
            deterministic = torch.are_deterministic_algorithms_enabled()
            self.blocker = auto_blocker(os.environ, current, defaults, deterministic)
            if self.blocker is not None:  # the user's choice: left as it is, not even restored at stop
                info(f"FederatedStrategy(num_threads='auto'): torch keeps its {current} threads ({self.blocker}).")
                return
            before, self._ceiling = cpu_snapshot(), current
            if before is not None and others_runnable() == 0:  # no other job wants a core: nothing to measure
                self._last, busy = before, 0.0
            else:  # this process idle for the window: all busy time in it is others'
                time.sleep(START_WINDOW_S if before is not None else 0.0)
                self._last = cpu_snapshot()
                busy = measured_busy(before, self._last)
            self._pending = None if busy is None else self._choose(busy)
        else:
            torch.set_num_threads(int(self.setting))
        self._original = current

    def round_start(self, round_index: int) -> None:
        """A round starts: with "auto", torch gets the cores other processes left free since the last check."""
        if self.setting != "auto" or self._original is None:  # not "auto", blocked, or not in a fit
            return
        change, self._pending = self._pending, None
        busy = measured_busy(self._last, now := cpu_snapshot())
        if busy is not None:  # else too short to tell: the count stays, the older snapshot too (a longer interval)
            change, self._last = self._choose(busy) or change, now
        if change is not None:
            self.changes.append((round_index, *change))
            info(f"FederatedStrategy: {change[0]} torch threads at round {round_index} ({change[1]:.1f} CPUs busy)")

    def _choose(self, busy: float) -> tuple[int, float] | None:
        """Sets torch's count for ``busy`` cores busy elsewhere; ``(threads, busy)`` where that changed it."""
        threads = min(self._ceiling, pick_threads(usable_cpus(), busy))
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads, busy

    def stop(self) -> None:
        """Fit ends: torch's count from before :meth:`start` again."""
        if self._original is not None:
            torch.set_num_threads(self._original)
        self._original, self._last = None, None

    def describe(self) -> str:
        """The setting and what it did, for the strategy's summary."""
        if self.setting != "auto" or self.blocker is not None:
            return f"num_threads={self.setting!r}" + (f" (inactive: {self.blocker})" if self.blocker else "")
        moves = ", ".join(f"{t} from round {r} ({b:.1f} CPUs busy elsewhere)" for r, t, b in self.changes)
        return f"num_threads='auto' (torch threads: {moves or torch.get_num_threads()})"
