"""Workers over several processes: the assignment, the checks, the aggregators' round sync, and real 2-process runs.

The aggregator tests run each "process" in a thread with an in-memory collective (fast, and the secure-aggregation
keys come from the OS, as in real use). The end-to-end tests start 2 processes with Gloo on the CPU through
Lightning's launchers (the subprocess script launcher, spawn) and ``torchrun``, running
``tests/strategies/distributed_script.py``, and compare with the same fits in one process.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from lightning_fed import FederatedConfigError, FederatedStrategy
from lightning_fed.aggregation import SCAFFOLD, Aggregator, FedAvg, FedMedian, Krum
from lightning_fed.backends.distributed import IdleBatch, RankRoundPlan, assign_workers, check_world
from lightning_fed.collective import Collective
from lightning_fed.privacy.dp import DPAggregator, DPConfig
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregationError, SecureAggregator
from lightning_fed.secure_aggregation.distributed import DistributedSecureAggregationRound
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "strategies" / "distributed_script.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


# -- the assignment -------------------------------------------------------------------------------------------------
def _loads(weights: Sequence[float], ranks: Sequence[int], world_size: int) -> list[float]:
    loads = [0.0] * world_size
    for w, r in zip(weights, ranks):
        loads[r] += w
    return loads


def _optimal_makespan(weights: Sequence[float], world_size: int) -> float:
    return min(
        max(_loads(weights, ranks, world_size)) for ranks in itertools.product(range(world_size), repeat=len(weights))
    )


@pytest.mark.parametrize(
    ("weights", "world_size"),
    [
        ([100, 10, 60, 50], 2),
        ([7, 7, 7, 7, 7], 2),
        ([1, 2, 3, 4, 5, 6, 7], 3),
        ([40, 1, 1, 1, 1, 1], 2),
        ([3, 0, 0], 3),
    ],
)
def test_assignment_is_deterministic_complete_and_balanced(weights, world_size):
    ranks = assign_workers(weights, world_size)
    assert ranks == assign_workers(list(weights), world_size)  # a pure function: every process computes the same
    assert len(ranks) == len(weights) and set(ranks) == set(range(world_size))  # each worker once, no rank empty
    # greedy largest-first is within 4/3 of the best split (Graham 1969); checked against the brute-force optimum
    assert max(_loads(weights, ranks, world_size)) <= 4 / 3 * _optimal_makespan(weights, world_size) + 1e-9


def test_assignment_examples():
    assert assign_workers([100, 10, 60, 50], 2) == [0, 0, 1, 1]  # loads 110 / 110
    assert assign_workers([5, 5, 5, 5], 2) == [0, 1, 0, 1]  # ties: fewer workers, then the lower rank
    assert assign_workers([5, 5], 1) == [0, 0]
    with pytest.raises(ValueError, match="world_size >= 1"):
        assign_workers([1], 0)


# -- the checks -----------------------------------------------------------------------------------------------------
def test_more_processes_than_workers_is_refused():
    with pytest.raises(
        FederatedConfigError, match=r"devices=3 x num_nodes=1 = 3 processes for 2 workers .*devices \* num_nodes <= 2"
    ):
        check_world(["a", "b"], [4, 4], devices=3, num_nodes=1)


def test_a_partition_leaving_a_process_without_data_is_refused():
    with pytest.raises(
        FederatedConfigError,
        match=r"leaves a process without data: devices=2 x num_nodes=2 = 4 processes, .*only 3 of the 5 workers.*"
        r"batch_size=8, drop_last=True: \['c', 'e'\].*devices \* num_nodes <= 3",
    ):
        check_world(["a", "b", "c", "d", "e"], [2, 1, 0, 3, 0], devices=2, num_nodes=2, batch_size=8, drop_last=True)
    check_world(["a", "b", "c"], [2, 0, 1], devices=2, num_nodes=1)  # enough workers with data: fine


def test_the_strategy_checks_before_training():
    # a Trainer asking for 3 processes; its data loader is handed to the strategy without starting them
    data = FedDM(tiny_dataset(16), num_workers=2, batch_size=4)
    t = trainer(max_epochs=1, strategy=FederatedStrategy(), accelerator="cpu", devices=3)
    assert t.world_size == 3 and isinstance(t.strategy.launcher, _SubprocessScriptLauncher)
    with pytest.raises(FederatedConfigError, match="3 processes for 2 workers"):
        t.strategy.process_dataloader(data.train_dataloader())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "follow"}, r"mode='follow'.*devices=2, num_nodes=1"),
        ({"vectorize": True}, r"vectorize=True.*devices=2, num_nodes=1"),
        ({"aggregation": Krum(num_byzantine=0)}, None),  # gathered like the other robust rules: fine
        ({"privacy": DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0)}, r"level='sample'.*devices=1"),
        ({"start_method": "threads"}, r"start_method='threads'"),
    ],
)
def test_what_cannot_run_over_processes_is_refused_at_trainer_construction(kwargs, match):
    if match is None:
        trainer(max_epochs=1, strategy=FederatedStrategy(**kwargs), accelerator="cpu", devices=2)
        return
    with pytest.raises(FederatedConfigError, match=match):
        trainer(max_epochs=1, strategy=FederatedStrategy(**kwargs), accelerator="cpu", devices=2)


def test_an_aggregator_without_sync_round_is_refused():
    class Last(Aggregator):
        def begin_round(self, global_tensors):
            self.update = None

        def accumulate(self, update, weight, worker_id):
            self.update = update

        def finalize(self, global_tensors):
            return [g + u for g, u in zip(global_tensors, self.update)]

    with pytest.raises(FederatedConfigError, match=r"cannot combine a round trained in several processes.*sync_round"):
        trainer(max_epochs=1, strategy=FederatedStrategy(aggregation=Last()), accelerator="cpu", devices=2)


def test_one_device_is_unchanged():
    data = FedDM(tiny_dataset(32), num_workers=3, batch_size=4)
    strategy = FederatedStrategy(clients_per_round=2)
    t = trainer(max_epochs=2, strategy=strategy, accelerator="cpu", devices=1)
    t.fit(BoringClassifier(4, 3), datamodule=data)
    assert t.world_size == 1 and strategy.launcher is None and strategy.collective is None
    assert not strategy.is_distributed and strategy.is_global_zero
    assert type(strategy.round_plan(0)) is RoundPlan and strategy.round_index == 2
    assert strategy.skipped_step_output() is None  # Lightning's own skip, as before
    assert all(getattr(w, "_elsewhere", None) is None for w in strategy.workers)


def test_rank_plan_pads_to_the_busiest_process():
    from lightning_fed.backends.distributed import RankRoundPlanner

    data = FedDM(tiny_dataset(40), num_workers=4, batch_size=4, partition="quantity_skew")
    loader = data.train_dataloader()
    planners = [
        RankRoundPlanner(
            loader,
            rank=r,
            world_size=2,
            devices=2,
            num_nodes=1,
            clients_per_round=2,
            local_epochs=1,
            local_steps=None,
            seed=3,
        )
        for r in range(2)
    ]
    assert planners[0].owners == planners[1].owners
    for round_index in range(6):
        plans = [p.plan(round_index) for p in planners]
        assert all(isinstance(p, RankRoundPlan) for p in plans)
        assert plans[0].total_steps == plans[1].total_steps  # the same number of Lightning steps everywhere
        assert sum(sum(p.local_steps) for p in plans) == sum(plans[0].steps)  # every sampled batch trained once
        for planner, plan in zip(planners, plans):
            batches = list(planner.batches(plan))
            assert len(batches) == plan.total_steps
            assert sum(isinstance(b, IdleBatch) for _, b in batches) == plan.padding
            assert {w.id for w, b in batches if w is not None} <= {w.id for w in planner.local_workers}


# -- the aggregators' round sync, each process a thread -------------------------------------------------------------
class _Room:
    """Where the threads of a fake process group meet."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=20)
        self.slots: list[Any] = [None] * world_size


class ThreadCollective(Collective):
    """:class:`Collective` for threads standing in for processes (no process group)."""

    def __init__(self, room: _Room, rank: int, owners: dict[Hashable, int]) -> None:
        super().__init__("cpu", owners)
        self.room, self._rank = room, rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self.room.world_size

    def _exchange(self, value: Any) -> list[Any]:
        self.room.slots[self._rank] = value
        self.room.barrier.wait()
        everything = list(self.room.slots)
        self.room.barrier.wait()
        return everything

    def all_reduce_sum(self, tensors):
        parts = self._exchange([t.detach().clone() for t in tensors])
        return [sum(column[1:], column[0].clone()) for column in zip(*parts)]

    def all_gather_object(self, obj):
        return [copy.deepcopy(o) for o in self._exchange(copy.deepcopy(obj))]


GLOBAL = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[0.1, 0.2], [0.3, 0.4]]), torch.tensor(3)]


def _updates(n: int, seed: int = 0) -> dict[str, tuple[list[torch.Tensor], float]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        update = [torch.randn(3, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)]
        out[f"w{i}"] = ([*update, torch.tensor(float(i % 2), dtype=torch.float64)], float(3 + 2 * i))
    return out


def _round(make: Callable[[], Aggregator], owners: dict[str, int], world_size: int, dropped: Sequence[str] = ()):
    """One round of the aggregator: in one process (reference), and over ``world_size`` threaded processes."""
    updates = _updates(len(owners))
    ids = list(owners)

    def run(
        agg: Aggregator, mine: Sequence[str], collective: Collective | None
    ) -> tuple[list[torch.Tensor], Aggregator, int]:
        agg.setup(ids)
        agg.setup_model(2)
        agg.check_num_clients(len(ids))
        if collective is not None:
            agg.setup_processes(collective)
        set_participants = getattr(agg, "set_participants", None)
        if callable(set_participants):
            set_participants(ids)
        agg.begin_round([t.clone() for t in GLOBAL])
        for w in mine:
            agg.worker_start(w, GLOBAL)
            update, weight = updates[w]
            sent = agg.worker_update(w, [u.clone() for u in update], 2, 0.1)
            if w in dropped:
                drop = getattr(agg, "drop", None)
                if callable(drop):
                    drop(w)
            else:
                agg.accumulate(sent, weight=weight, worker_id=w)
        if collective is not None:
            agg.sync_round(collective)
        contributions = agg.num_contributions  # the whole round's, in every process, once synced
        return agg.finalize([t.clone() for t in GLOBAL]), agg, contributions

    reference, ref_agg, ref_count = run(make(), ids, None)
    room = _Room(world_size)
    results: list[Any] = [None] * world_size
    errors: list[BaseException] = []

    def process(rank: int) -> None:
        try:
            mine = [w for w in ids if owners[w] == rank]
            results[rank] = run(make(), mine, ThreadCollective(room, rank, owners))
        except BaseException as err:  # surfaced below
            errors.append(err)
            room.barrier.abort()

    threads = [threading.Thread(target=process, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert all(count == ref_count for _, _, count in results)
    return (reference, ref_agg), [(new, agg) for new, agg, _ in results]


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


OWNERS = {"w0": 0, "w1": 1, "w2": 1, "w3": 0, "w4": 2}


@pytest.mark.parametrize(
    "make", [FedAvg, SCAFFOLD, FedMedian, lambda: Krum(num_byzantine=1)], ids=["fedavg", "scaffold", "median", "krum"]
)
def test_a_round_over_processes_equals_one_process(make):
    (reference, ref_agg), results = _round(make, OWNERS, world_size=3)
    for new, _ in results:
        assert _max_diff(new, reference) < 1e-12  # the same new global model in every process
    if isinstance(ref_agg, SCAFFOLD):  # the server control variate too; each c_i stays in its worker's process
        for rank, (_, agg) in enumerate(results):
            assert _max_diff(agg.server_control_variate, ref_agg.server_control_variate) < 1e-12
            assert {w for w in OWNERS if agg.control_variate(w) is not None} == {
                w for w, r in OWNERS.items() if r == rank
            }


def test_a_process_without_any_update_still_takes_part():
    (reference, _), results = _round(FedAvg, {"w0": 0, "w1": 0, "w2": 0}, world_size=2)
    for new, _ in results:
        assert _max_diff(new, reference) < 1e-12


def test_secure_aggregation_masks_cancel_across_processes():
    # keys, self-mask seeds and shares from the OS (seed=None): each process holds only its own workers' secrets
    make = lambda: SecureAggregator(FedAvg(), SecureAggregationConfig(threshold=3, rounding="nearest"))  # noqa: E731
    (plain, _), _ = _round(FedAvg, OWNERS, world_size=3, dropped=["w2"])
    (reference, _), results = _round(make, OWNERS, world_size=3, dropped=["w2"])
    step = 2.0**-24  # the quantization step; the sum of 4 weighted updates is off by at most 4 half-steps
    assert _max_diff(reference, plain) < 4 * step
    for new, agg in results:
        assert _max_diff(new, plain) < 4 * step  # masks of pairs in different processes cancel; w2's are removed
        assert agg.last_round_clipped == 0


def test_each_process_holds_only_its_workers_secrets():
    owners = {"a": 0, "b": 1, "c": 0}
    room, rounds = _Room(2), {}

    def process(rank: int) -> None:
        collective = ThreadCollective(room, rank, owners)
        rounds[rank] = DistributedSecureAggregationRound(
            list(owners), 2, SecureAggregationConfig(), collective=collective
        )

    threads = [threading.Thread(target=process, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(rounds[0]._clients) == {"a", "c"} and set(rounds[1]._clients) == {"b"}
    with pytest.raises(
        SecureAggregationError, match=r"'b' is not a participant .* process \(rank 0\): it trains in process 1"
    ):
        rounds[0].client("b")


@pytest.mark.parametrize("adaptive", [False, True])
def test_server_dp_noise_is_added_once(adaptive):
    config = DPConfig(noise_multiplier=2.0, clip_norm=1.0, seed=4, adaptive_clipping=adaptive, clipped_count_stddev=2.0)
    make = lambda: DPAggregator(FedAvg(), config)  # noqa: E731
    (plain, _), _ = _round(lambda: DPAggregator(FedAvg(), DPConfig(noise_multiplier=0.0, clip_norm=1.0)), OWNERS, 3)
    (reference, ref_agg), results = _round(make, OWNERS, world_size=3)
    assert _max_diff(reference, plain) > 0.1  # the noise is there
    for new, agg in results:
        assert _max_diff(new, reference) < 1e-12  # once, as in one process (not 0 times, not 3 times)
        assert agg.clip_norm == pytest.approx(ref_agg.clip_norm, abs=1e-12)  # the count's noise, once as well
        assert agg.accountant.history == ref_agg.accountant.history


def test_distributed_dp_noise_streams_differ_between_processes():
    config = DPConfig(noise_multiplier=1.0, clip_norm=1.0, seed=4, noise="distributed")
    owners = {"w0": 0, "w1": 1}
    _, results = _round(lambda: DPAggregator(FedAvg(), config), owners, world_size=2)
    streams = [agg._rng().initial_seed() for _, agg in results]
    assert streams[0] != streams[1]  # the same seed everywhere, yet each process's workers draw their own noise
    for new, _ in results:
        assert _max_diff(new, results[0][0]) < 1e-12


# -- real processes: Gloo on the CPU ---------------------------------------------------------------------------------
def _launch(command: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _run_script(tmp_path: Path, *args: str, launcher: str = "popen", timeout: int = 240) -> dict[str, Any]:
    out = tmp_path / "out.pt"
    if launcher == "torchrun":
        command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(SCRIPT), "--out", str(out), *args]
    else:
        command = [sys.executable, str(SCRIPT), "--out", str(out), "--start-method", launcher, *args]
    proc = _launch(command, timeout)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # no process left a Gloo group to the interpreter's finalization, which can abort a finished run (SIGABRT)
    assert "process group at exit: left" not in proc.stdout, proc.stdout[-3000:]
    if launcher != "spawn":  # spawned processes end without exit handlers (and without finalization)
        assert proc.stdout.count("process group at exit: destroyed") == 2, proc.stdout[-3000:]
    return torch.load(out, weights_only=False)


KINDS = ["fedavg", "momentum", "secure", "dp", "scaffold", "median", "failures", "rank_seeded"]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> dict[str, Any]:
    """One launch (Lightning's subprocess script launcher, 2 processes) running every kind, 3 rounds each."""
    return _run_script(tmp_path_factory.mktemp("runs"), "--devices", "2", "--runs", ",".join(KINDS), "--rounds", "3")


@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_equal_one_process(two_process_runs, kind):
    from tests.strategies.distributed_script import fit

    multi = two_process_runs[kind]
    single = fit("fedavg" if kind == "rank_seeded" else kind, rounds=3, devices=1)
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert multi["round_index"] == single["round_index"] == 3
    diff = _max_diff(list(multi["state"].values()), list(single["state"].values()))
    assert diff < 1e-5, diff
    # every worker trained as often, in its process; failures, dropouts and late workers counted alike
    counts = lambda s: {w: {k: v for k, v in row.items() if k != "last_loss"} for w, row in s.items()}  # noqa: E731
    assert counts(multi["summary"]) == counts(single["summary"])
    for w, row in single["summary"].items():
        assert multi["summary"][w]["last_loss"] == pytest.approx(row["last_loss"], abs=1e-5)
    assert multi["metrics"]["val_acc"] == pytest.approx(single["metrics"]["val_acc"], abs=1e-6)  # torchmetrics' sync
    for w in single["summary"]:  # per-worker losses of both processes reach process 0's logs
        assert multi["metrics"][f"train_loss/{w}"] == pytest.approx(single["metrics"][f"train_loss/{w}"], abs=1e-5)
    # client sampling left a process without any worker in some round: it took idle steps and the round still met
    locals_ = [p["local"] for p in multi["plans"]]
    assert set(multi["owners"].values()) == {0, 1}
    if kind == "fedavg":
        assert any(len(local) == 0 for local in locals_), locals_
    if kind == "failures":
        assert sum(row["dropped"] + row["late"] for row in single["summary"].values()) > 0


def test_checkpoint_and_resume_in_two_processes(tmp_path):
    """Under torchrun: 4 rounds; 2 rounds with a checkpoint a round; resumed from round 2 -> the 4-round model."""
    runs = _run_script(
        tmp_path, "--devices", "2", "--runs", "resume", "--ckpt-dir", str(tmp_path / "ckpt"), launcher="torchrun"
    )
    full, stopped, resumed = runs["resume/full"], runs["resume/stopped"], runs["resume/resumed"]
    assert full["world_size"] == 2 and resumed["round_index"] == 4 and stopped["round_index"] == 2
    assert _max_diff(list(stopped["state"].values()), list(full["state"].values())) > 1e-3  # resuming has work to do
    # dropout in the model: the per-process RNG states must come back too
    assert _max_diff(list(resumed["state"].values()), list(full["state"].values())) < 1e-6
    assert {w: r["steps"] for w, r in resumed["summary"].items()} == {w: r["steps"] for w, r in full["summary"].items()}
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=False)["federated"]
    assert len(checkpoint["processes"]) == 2  # each process's RNG and aggregator state
    trained = {w for w, row in stopped["summary"].items() if row["steps"] > 0}
    assert set(checkpoint["worker_states"]) == trained  # every trained worker's sealed optimizer state...
    assert {full["owners"][w] for w in trained} == {0, 1}  # ...from both processes
    # the pointer API across processes: process 0 reaches its own workers; the others refuse, saying why
    probe = full["probe"]
    mine = sorted(w for w, r in full["owners"].items() if r == 0)
    assert probe["reached"] == mine
    assert set(probe["refusals"]) == set(full["owners"]) - set(mine)
    assert all("trains in process 1 and this is process 0" in text for text in probe["refusals"].values())


def test_spawn_launcher(tmp_path):
    from tests.strategies.distributed_script import fit

    runs = _run_script(tmp_path, "--devices", "2", "--runs", "fedavg", "--rounds", "2", launcher="spawn")
    single = fit("fedavg", rounds=2, devices=1)
    assert runs["fedavg"]["round_index"] == 2  # brought back to the main process with the weights
    assert _max_diff(list(runs["fedavg"]["state"].values()), list(single["state"].values())) < 1e-5


def test_errors_surface_from_the_processes(tmp_path):
    proc = _launch(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.pt"), "--devices", "2", "--workers", "1"], timeout=180
    )
    assert proc.returncode != 0
    assert "got devices=2 x num_nodes=1 = 2 processes for 1 workers ['w0']" in proc.stderr
