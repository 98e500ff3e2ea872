"""``FederatedStrategy(num_threads=...)``: torch's thread count from the cores other processes leave free
(:mod:`lightning_fed.backends.threads`): the pure functions, the governor's decisions, the wiring into fit."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from itertools import count

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.backends import threads
from lightning_fed.backends.threads import (
    CpuSnapshot,
    ThreadGovernor,
    auto_blocker,
    busy_elsewhere,
    check_num_threads,
    loadavg_busy,
    machine_busy_seconds,
    others_runnable,
    pick_threads,
    usable_cpus,
)
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.testing import BoringClassifier


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch at 2 threads on a machine of 2 usable CPUs, no thread variables, deterministic algorithms off (an
    earlier ``Trainer(deterministic=True)`` leaves them on); the count and that setting restored afterwards."""
    before, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # set, they make "auto" stand aside
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "START_WINDOW_S", 0.0)  # the start's look at the load: no wait in tests
    monkeypatch.setattr(threads, "others_runnable", lambda: 1)  # another job wants a core: the start measures
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def fake_load(monkeypatch: pytest.MonkeyPatch, busy: list[float]) -> list[CpuSnapshot]:
    """``cpu_snapshot`` replaced: 1 s apart, this process using 1 core, other processes ``busy[i]`` cores in the
    interval before the i-th look at the load (0: the start's, 1: round 0's, ...; the last value repeats)."""
    taken: list[CpuSnapshot] = []
    clock = count()

    def snapshot() -> CpuSnapshot:
        i = next(clock)
        machine = sum(1.0 + busy[min(k, len(busy) - 1)] for k in range(i))
        taken.append(CpuSnapshot(machine=machine, own=float(i), wall=float(i)))
        return taken[-1]

    monkeypatch.setattr(threads, "cpu_snapshot", snapshot)
    return taken


def spy_set_num_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.set_num_threads

    def spy(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    return calls


# -- the pure functions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("usable", "busy", "expected"), [(2, 1.0, 1), (2, 0.2, 2), (2, 3.0, 1), (2, 0.5, 2),
                                                          (2, 0.6, 1), (8, 2.4, 6), (1, 0.0, 1)])  # fmt: skip
def test_pick_threads_leaves_the_busy_cores(usable, busy, expected):
    assert pick_threads(usable, busy) == expected


def test_busy_elsewhere_subtracts_this_process_and_divides_by_the_wall_time():
    before = CpuSnapshot(machine=100.0, own=10.0, wall=50.0)
    assert busy_elsewhere(before, CpuSnapshot(machine=104.0, own=12.0, wall=52.0)) == pytest.approx(1.0)
    assert busy_elsewhere(before, CpuSnapshot(machine=100.4, own=10.0, wall=52.0)) == pytest.approx(0.2)
    assert busy_elsewhere(before, CpuSnapshot(machine=108.0, own=12.0, wall=52.0)) == pytest.approx(3.0)
    assert busy_elsewhere(before, CpuSnapshot(machine=101.0, own=11.5, wall=52.0)) == 0.0  # rounding: never < 0
    assert busy_elsewhere(before, CpuSnapshot(machine=100.0, own=10.0, wall=50.04)) is None  # too short to measure


def test_machine_busy_seconds_reads_the_busy_columns(tmp_path):
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice: idle and iowait are not busy
    stat.write_text("cpu  100 20 30 4000 500 6 7 8 0 0\ncpu0 50 10 15 2000 250 3 3 4 0 0\n")
    assert machine_busy_seconds(str(stat)) == pytest.approx(171 / ticks)
    stat.write_text("intr 1 2 3\n")
    assert machine_busy_seconds(str(stat)) is None
    assert machine_busy_seconds(str(tmp_path / "missing")) is None
    if os.path.exists("/proc/stat"):  # Linux: the real file reads, and the machine's busy time only grows
        first = machine_busy_seconds()
        assert first is not None and 0 < first <= (machine_busy_seconds() or 0.0)


def test_usable_cpus_follows_the_affinity_mask_else_the_cpu_count(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


@pytest.mark.parametrize(("line", "expected"), [("0.1 0.2 0.3 1/80 9", 0), ("2.0 1.5 1.2 3/120 9", 2), ("x", None)])
def test_others_runnable_reads_the_running_count_less_the_reader(tmp_path, line, expected):
    path = tmp_path / "loadavg"
    path.write_text(line + "\n")
    assert others_runnable(looks=3, gap_s=0.0, path=str(path)) == expected
    assert others_runnable(path=str(tmp_path / "missing")) is None


def test_others_runnable_takes_the_fewest_of_its_looks(monkeypatch):
    counts = iter(["3/90", "1/90", "3/90"])  # a passing process in some looks only: nobody needs a core

    class Reading:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return f"0.0 0.0 0.0 {next(counts)} 1"

    monkeypatch.setattr("builtins.open", lambda *a, **k: Reading())
    assert others_runnable(looks=3, gap_s=0.0) == 0


def test_on_a_quiet_machine_the_start_measures_nothing_and_waits_for_nothing(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "others_runnable", lambda: 0)
    taken = fake_load(monkeypatch, [2.0])  # were the window measured, it would find 2 cores busy
    slept: list[float] = []
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    governor = ThreadGovernor("auto")
    governor.start()
    assert (len(taken), slept, torch.get_num_threads()) == (1, [], 2)
    governor.round_start(0)  # the round measures from the start's snapshot: the 2 busy cores now count
    assert torch.get_num_threads() == 1 and governor.changes == [(0, 1, 2.0)]
    governor.stop()
    assert torch.get_num_threads() == 2


def test_loadavg_stands_in_without_proc_stat(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 0.0, 0.0), raising=False)
    assert loadavg_busy() == pytest.approx(1.5)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.0, 0.0), raising=False)
    assert loadavg_busy() == 0.0

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable, raising=False)
    assert loadavg_busy() is None


def test_auto_blocker_names_the_users_choice():
    assert auto_blocker({}, 2, {2}, deterministic=False) is None
    assert auto_blocker({"OMP_NUM_THREADS": "2"}, 2, {2}, deterministic=False) == "OMP_NUM_THREADS=2 is set"
    assert auto_blocker({"MKL_NUM_THREADS": "1"}, 2, {2}, deterministic=False) == "MKL_NUM_THREADS=1 is set"
    assert auto_blocker({"OMP_NUM_THREADS": ""}, 2, {2}, deterministic=False) is None  # empty: not set
    assert auto_blocker({}, 3, {2, 4}, deterministic=False) == "torch.set_num_threads(3) was called"
    assert "deterministic" in (auto_blocker({}, 2, {2}, deterministic=True) or "")


# -- bad settings -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -2, "fast", "AUTO", True, False, 1.5, [2]])
def test_a_bad_num_threads_names_the_value_and_the_fix(value):
    pattern = rf"`num_threads={value!r}` is not valid: pass 'auto' .* an integer >= 1 .* or None".replace("[", r"\[")
    with pytest.raises(FederatedConfigError, match=pattern):
        check_num_threads(value)
    with pytest.raises(FederatedConfigError, match=pattern):
        FederatedStrategy(num_threads=value)
    with pytest.raises(FederatedConfigError, match=pattern):
        ThreadGovernor(value)


@pytest.mark.parametrize("value", ["auto", 1, 4, None])
def test_good_settings_pass(value):
    assert check_num_threads(value) == value
    assert FederatedStrategy(num_threads=value).threads.setting == value


# -- the governor ---------------------------------------------------------------------------------------------------------
def test_auto_follows_the_load_round_by_round_and_restores_at_stop(two_cores, monkeypatch, caplog):
    taken = fake_load(monkeypatch, busy=[1.0, 1.3, 0.2, 0.2, 3.0])
    calls = spy_set_num_threads(monkeypatch)
    slept: list[float] = []
    monkeypatch.setattr(threads, "START_WINDOW_S", 0.25)
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    governor = ThreadGovernor("auto")
    with caplog.at_level(logging.INFO, logger="lightning_fed"):
        governor.start()  # a first look, over a short wait: what runs before round 0 has the right count too
        assert (len(taken), slept, torch.get_num_threads(), calls) == (2, [0.25], 1, [1])
        seen = []
        for round_index in range(4):
            governor.round_start(round_index)
            seen.append(torch.get_num_threads())
    assert seen == [1, 2, 2, 1]
    assert calls == [1, 2, 1]  # set only when the count changes
    assert governor.changes == [(0, 1, pytest.approx(1.0)), (1, 2, pytest.approx(0.2)), (3, 1, pytest.approx(3.0))]
    assert "1 torch threads at round 0 (1.0 CPUs busy)" in caplog.text  # the start's change, named by its round
    assert "2 torch threads at round 1 (0.2 CPUs busy)" in caplog.text
    assert "1 from round 0 (1.0 CPUs busy elsewhere), 2 from round 1" in governor.describe()
    governor.stop()
    assert torch.get_num_threads() == 2
    governor.round_start(4)  # after stop: nothing
    assert calls == [1, 2, 1, 2]


def test_auto_never_goes_above_the_count_torch_started_with(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)  # e.g. 4 logical CPUs, torch's default 2 physical cores
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 2)
    fake_load(monkeypatch, busy=[0.0, 3.0])
    governor = ThreadGovernor("auto")
    governor.start()  # 4 usable CPUs, none busy elsewhere: still torch's 2
    assert torch.get_num_threads() == 2
    governor.round_start(0)
    assert torch.get_num_threads() == 1 and governor.changes == [(0, 1, pytest.approx(3.0))]
    governor.stop()


def test_a_too_short_interval_keeps_the_count_and_the_older_snapshot(two_cores, monkeypatch):
    snapshots = iter([CpuSnapshot(0.0, 0.0, 0.0), CpuSnapshot(0.0, 0.0, 0.1),  # start: 0.1 s, nothing busy
                      CpuSnapshot(0.01, 0.0, 0.11), CpuSnapshot(2.0, 1.0, 1.1)])  # fmt: skip
    monkeypatch.setattr(threads, "cpu_snapshot", lambda: next(snapshots))
    governor = ThreadGovernor("auto")
    governor.start()
    governor.round_start(0)  # 10 ms after start: not measured
    assert torch.get_num_threads() == 2 and governor.changes == []
    governor.round_start(1)  # measured from the start's snapshot: 1 core busy elsewhere over 1 s
    assert governor.changes == [(1, 1, pytest.approx(1.0))]
    governor.stop()


def test_without_proc_stat_the_load_average_decides(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "cpu_snapshot", lambda: None)
    monkeypatch.setattr(threads, "loadavg_busy", lambda: 1.2)
    governor = ThreadGovernor("auto")
    governor.start()
    assert torch.get_num_threads() == 1
    governor.round_start(0)
    monkeypatch.setattr(threads, "loadavg_busy", lambda: None)  # no load average either: the count stays
    governor.round_start(1)
    assert torch.get_num_threads() == 1 and governor.changes == [(0, 1, pytest.approx(1.2))]
    governor.stop()
    assert torch.get_num_threads() == 2


def one_round_of_auto(monkeypatch: pytest.MonkeyPatch, busy: float) -> tuple[ThreadGovernor, list[int]]:
    """An "auto" governor through start, one round and stop under ``busy`` cores busy elsewhere; the counts it set."""
    fake_load(monkeypatch, busy=[busy])
    calls = spy_set_num_threads(monkeypatch)
    governor = ThreadGovernor("auto")
    governor.start()
    governor.round_start(0)
    governor.stop()
    return governor, calls


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_auto_stands_aside_when_a_thread_variable_is_set(two_cores, monkeypatch, variable):
    monkeypatch.setenv(variable, "2")
    governor, calls = one_round_of_auto(monkeypatch, busy=1.5)
    assert calls == [] and torch.get_num_threads() == 2
    assert governor.describe() == f"num_threads='auto' (inactive: {variable}=2 is set)"


def test_auto_stands_aside_when_the_user_set_a_count(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 4)
    torch.set_num_threads(3)  # not a count torch picks by itself here
    governor, calls = one_round_of_auto(monkeypatch, busy=2.0)
    assert calls == [] and torch.get_num_threads() == 3
    assert "torch.set_num_threads(3) was called" in governor.describe()


def test_auto_stands_aside_under_deterministic_algorithms(two_cores, monkeypatch):
    fake_load(monkeypatch, busy=[1.5])
    calls = spy_set_num_threads(monkeypatch)
    governor = ThreadGovernor("auto")
    torch.use_deterministic_algorithms(True)
    try:
        governor.start()
        governor.round_start(0)
    finally:
        torch.use_deterministic_algorithms(False)
    governor.stop()
    assert calls == [] and "deterministic" in governor.describe()


def test_none_leaves_torch_alone_and_a_count_holds_for_the_whole_fit(two_cores, monkeypatch):
    fake_load(monkeypatch, busy=[1.5])
    calls = spy_set_num_threads(monkeypatch)
    off = ThreadGovernor(None)
    off.start(), off.round_start(0), off.stop()
    assert calls == [] and off.describe() == "num_threads=None"
    fixed = ThreadGovernor(3)
    fixed.start()
    assert torch.get_num_threads() == 3
    fixed.round_start(0)  # the load does not move a count the user chose
    assert torch.get_num_threads() == 3
    fixed.stop()
    assert calls == [3, 2] and torch.get_num_threads() == 2


# -- wired into fit -------------------------------------------------------------------------------------------------------
class ThreadRecorder(BoringClassifier):
    """Records ``(round, torch threads)`` at every training step, and the count at ``on_train_start`` (before the
    first round)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, int]] = set()
        self.at_train_start: int | None = None

    def on_train_start(self) -> None:
        self.at_train_start = torch.get_num_threads()

    def training_step(self, batch, batch_idx):
        self.seen.add((self.current_epoch, torch.get_num_threads()))
        return super().training_step(batch, batch_idx)


def fit(strategy: FederatedStrategy, rounds: int = 2) -> ThreadRecorder:
    data = FederatedDataModule.from_datasets(
        TensorDataset(torch.randn(32, 4), torch.arange(32) % 2), workers=["tw-a", "tw-b"], batch_size=8
    )
    model = ThreadRecorder()
    trainer = pl.Trainer(strategy=strategy, max_epochs=rounds, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    return model


def test_a_fixed_count_holds_inside_training_step_and_is_restored_after_fit(two_cores):
    model = fit(FederatedStrategy(num_threads=1))
    assert model.seen == {(0, 1), (1, 1)} and model.at_train_start == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("options", [{"local_loop": "steps"}, {"local_loop": "fused"}, {"vectorize": True}],
                         ids=["steps", "fused", "vectorized"])  # fmt: skip
def test_auto_rechecks_at_every_round_in_every_backend(two_cores, monkeypatch, options):
    fake_load(monkeypatch, busy=[1.0, 1.0, 0.0])  # at the start and round 0: 1 of the 2 cores busy elsewhere
    strategy = FederatedStrategy(num_threads="auto", **options)
    model = fit(strategy)
    assert model.at_train_start == 1 and model.seen == {(0, 1), (1, 2)}
    assert strategy.threads.changes == [(0, 1, pytest.approx(1.0)), (1, 2, pytest.approx(0.0))]
    assert torch.get_num_threads() == 2


def test_auto_keeps_out_of_a_fit_that_sets_the_thread_variable(two_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    fake_load(monkeypatch, busy=[1.0])
    strategy = FederatedStrategy()  # "auto" by default
    model = fit(strategy)
    assert model.seen == {(0, 2), (1, 2)} and strategy.threads.changes == []
    assert "OMP_NUM_THREADS=2 is set" in strategy.summary()
