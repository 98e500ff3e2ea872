"""Torch's intra-op thread count from the cores the machine has free: ``FederatedStrategy(num_threads="auto")``.

OpenMP threads on cores another job keeps busy multiply a step's cost (2 cores shared with a 2-thread job: a
benchmark's FedAvg rounds took 3.4x as long with torch's 2 threads as with 1). So by default, at each round's start,
the strategy measures how many cores *other* processes kept busy since the last check (the machine's busy CPU time
less this process's own, over the wall time) and gives torch the cores left, never more than it had at the start::

    busy = (machine busy seconds - own busy seconds) / wall seconds     # /proc/stat and os.times()
    threads = max(1, min(usable, round(usable - busy)))                  # usable: this process's CPU affinity

Without ``/proc/stat`` (macOS, Windows) the 1-minute load average stands in (``load - 1``: this process counts as
one core); without that either, "auto" keeps the count it has.

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
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CpuSnapshot(NamedTuple):
    """CPU seconds the machine (``machine``) and this process (``own``) have been busy, at ``wall`` (monotonic)."""

    machine: float
    own: float
    wall: float


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds the machine has been busy since boot (``/proc/stat``'s ``cpu`` line); ``None``: unreadable."""
    try:
        with open(path) as stat:
            line = stat.readline()
        user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in line.split()[1:9]] + [0] * 8)[:8]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = user + nice + system + irq + softirq + steal  # jiffies; idle and iowait are not busy
    return busy / ticks if line.startswith("cpu ") and ticks > 0 else None


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
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
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
    if deterministic:
        return "deterministic algorithms are on: the results must not depend on the load"
    return None


class ThreadGovernor:
    """Torch's intra-op thread count during fit (see the module docstring): :meth:`start` at the strategy's setup,
    :meth:`round_start` at each round's start, :meth:`stop` at teardown (torch's count from before ``start`` again).

    ``setting``: ``"auto"``, a count, or ``None`` (leave torch alone). "auto" respects a choice the user made: it
    does nothing where ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, where torch's count is not one torch picks
    by itself (the usable CPUs, or the size of its inter-op pool, which it sizes alike: physical cores), or where
    deterministic algorithms are on (``Trainer(deterministic=True)``: the thread count changes how reductions round,
    so the numbers would depend on the load). ``torch.set_num_threads(n)`` with ``n`` equal to torch's own default
    cannot be told apart from the default and leaves "auto" in control: pass ``num_threads=n`` or ``None`` instead.

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

    @property
    def active(self) -> bool:
        """Whether "auto" chooses the count now (between :meth:`start` and :meth:`stop`, where not blocked)."""
        return self.setting == "auto" and self._original is not None

    def start(self) -> None:
        """Fit starts: a count applies now; "auto" checks it may act, then takes its first snapshot."""
        self.changes, self.blocker = [], None
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
            self._ceiling, self._last = current, cpu_snapshot()
        else:
            torch.set_num_threads(int(self.setting))
        self._original = current

    def round_start(self, round_index: int) -> None:
        """A round starts: with "auto", torch gets the cores other processes left free since the last check."""
        if not self.active:
            return
        now = cpu_snapshot()
        busy = loadavg_busy() if now is None or self._last is None else busy_elsewhere(self._last, now)
        if busy is None:  # nothing measured: keep the count, and the older snapshot (a longer interval next time)
            self._last = self._last or now
            return
        threads = min(self._ceiling, pick_threads(usable_cpus(), busy))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append((round_index, threads, busy))
            info(f"FederatedStrategy: {threads} torch threads at round {round_index} ({busy:.1f} CPUs busy elsewhere)")
        self._last = now

    def stop(self) -> None:
        """Fit ends: torch's count from before :meth:`start` again."""
        if self._original is not None:
            torch.set_num_threads(self._original)
        self._original, self._last = None, None

    def describe(self) -> str:
        """The setting and what it did, for the strategy's summary."""
        if self.setting != "auto":
            return f"num_threads={self.setting}"
        if self.blocker is not None:
            return f"num_threads='auto' (inactive: {self.blocker})"
        moves = ", ".join(f"{t} from round {r} ({b:.1f} CPUs busy elsewhere)" for r, t, b in self.changes)
        return f"num_threads='auto' (torch threads: {moves or torch.get_num_threads()})"
