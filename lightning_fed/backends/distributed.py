"""Workers spread over several processes: which process trains which worker, and how a round comes together.

With ``Trainer(strategy=FederatedStrategy(), devices=N, num_nodes=M)`` Lightning starts ``N * M`` processes (its
launchers and cluster environments: the subprocess script launcher, spawn, ``torchrun``, SLURM) and a
``torch.distributed`` process group (Gloo on CPU, NCCL on GPU). Every process builds the whole federation (the same
datamodule) and the same round plans (client sampling is a pure function of the seed and the round), but trains
only its own workers:

* :func:`assign_workers` gives each worker to one process, deterministically, balanced by sample count (greedy,
  largest first): the same answer in every process, without any communication;
* :class:`RankRoundPlanner` keeps the global plan (every process knows who takes part) and iterates only this
  process's batches, padded with :class:`IdleBatch` steps up to the busiest process's count, so that every process
  runs the same number of Lightning steps per round (Lightning synchronizes at every step, and a process whose
  workers were not sampled must not end its epoch early);
* :meth:`DistributedBackend.sync_round` runs at the end of each round in every process: the per-worker bookkeeping
  (who finished, who failed, steps, losses: each part's ``report``/``merge``) is exchanged, then the aggregator adds
  up the processes' weighted sums in float64
  (:meth:`~lightning_fed.aggregation.Aggregator.sync_round`), so ``finalize`` returns the same global model in
  every process: the one a single process would have computed. Secure aggregation's pairwise masks cancel across
  processes, and DP noise is added once;
* :func:`gather_state` / :func:`select_state`: checkpoints are written by process 0 with every worker's state and
  each process's own (RNG, per-process aggregator state), and each process resumes from its own part.

Example:
    >>> assign_workers([100, 10, 60, 50], world_size=2)  # 100 -> rank 0, 60 -> 1, 50 -> 1, 10 -> 0
    [0, 0, 1, 1]
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.collective import Collective
from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import info, warn
from lightning_fed.rounds.lifecycle import Rounds
from lightning_fed.rounds.planning import RoundPlan, RoundPlanner
from lightning_fed.workers.base import BaseWorker


def assign_workers(weights: Sequence[float], world_size: int) -> list[int]:
    """The process (rank) of each worker, by position: greedy largest-first over ``weights`` (sample counts).

    Workers are taken by decreasing weight (ties: the earlier one first) and each goes to the process with the least
    weight so far (ties: the one with fewer workers, then the lower rank). A pure function: every process computes
    the same assignment. With ``world_size <= len(weights)`` every process gets at least one worker.

    Example:
        >>> assign_workers([5, 5, 5], world_size=2)
        [0, 1, 0]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"assign_workers needs world_size >= 1, got {world_size!r}")
    loads = [0.0] * world_size
    counts = [0] * world_size
    ranks = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda j: (-float(weights[j]), j)):
        rank = min(range(world_size), key=lambda r: (loads[r], counts[r], r))
        ranks[i] = rank
        loads[rank] += float(weights[i])
        counts[rank] += 1
    return ranks


def check_world(
    worker_ids: Sequence[Hashable],
    num_batches: Sequence[int],
    *,
    devices: int,
    num_nodes: int,
    batch_size: int | None = None,
    drop_last: bool | None = None,
) -> None:
    """Refuse a run in which some process would train nothing: more processes than workers, or than workers with
    data."""
    world_size = devices * num_nodes
    n = len(worker_ids)
    processes = f"devices={devices} x num_nodes={num_nodes} = {world_size} processes"
    if world_size > n:
        raise FederatedConfigError(
            f"FederatedStrategy trains each worker in one process and got {processes} for {n} workers "
            f"{list(worker_ids)}: {world_size - n} process(es) would have no worker to train. Pass devices * "
            f"num_nodes <= {n} (e.g. devices={max(1, n // num_nodes)}), or federate the data over at least "
            f"{world_size} workers."
        )
    with_data = [w for w, b in zip(worker_ids, num_batches) if b > 0]
    if world_size > len(with_data):
        empty = [w for w, b in zip(worker_ids, num_batches) if b <= 0]
        how = f" with batch_size={batch_size}, drop_last={drop_last}" if batch_size is not None else ""
        raise FederatedConfigError(
            f"the partition leaves a process without data: {processes}, but only {len(with_data)} of the {n} "
            f"workers have a batch to train (no data{how}: {empty}). Pass devices * num_nodes <= {len(with_data)}, "
            "or choose a partition (or batch_size, drop_last) that gives every worker data."
        )


class IdleBatch:
    """A step a process takes while the busiest process still trains: no worker, no gradient, no update."""

    __slots__ = ("position", "round_index")

    def __init__(self, round_index: int, position: int) -> None:
        self.round_index = round_index
        self.position = position

    def __repr__(self) -> str:
        return f"IdleBatch(round={self.round_index}, step={self.position})"


@dataclass(frozen=True)
class RankRoundPlan(RoundPlan):
    """A round seen from one process: ``workers`` and ``steps`` are the whole round's (every process knows who takes
    part), ``local_workers``/``local_steps`` are the ones this process trains, and ``padding`` the idle steps that
    bring it to the busiest process's count. ``total_steps`` is this process's Lightning steps in the round."""

    rank: int = 0
    local_workers: tuple[BaseWorker, ...] = ()
    local_steps: tuple[int, ...] = ()
    padding: int = 0

    @property
    def total_steps(self) -> int:
        return sum(self.local_steps) + self.padding


class RankRoundPlanner(RoundPlanner):
    """:class:`~lightning_fed.rounds.RoundPlanner` for one process of ``world_size``: the same plans,
    this process's batches.

    Args:
        loader: the federated train loader (the same in every process).
        rank, world_size: this process and how many there are.
        devices, num_nodes: how the processes were asked for (named in the errors).
        kwargs: as :class:`~lightning_fed.rounds.RoundPlanner`.
    """

    def __init__(
        self,
        loader: FederatedDataLoader,
        *,
        rank: int,
        world_size: int,
        devices: int,
        num_nodes: int,
        **kwargs: Any,
    ) -> None:
        workers = list(loader.workers)
        check_world(
            [w.id for w in workers],
            [loader.num_batches(w) for w in workers],
            devices=devices,
            num_nodes=num_nodes,
            batch_size=loader.batch_size,
            drop_last=loader.drop_last,
        )
        super().__init__(loader, **kwargs)
        self.rank = rank
        self.world_size = world_size
        # balanced by sample count: a round's work with local_epochs; with local_steps every worker does the same
        weights = [len(loader.federated_dataset[w.id]) if self.local_steps is None else 1 for w in self.workers]
        self.ranks = assign_workers(weights, world_size)
        self.owners: dict[Hashable, int] = {w.id: r for w, r in zip(self.workers, self.ranks)}

    @property
    def local_workers(self) -> list[BaseWorker]:
        """The workers this process trains."""
        return [w for w in self.workers if self.owners[w.id] == self.rank]

    def plan(self, round_index: int) -> RankRoundPlan:
        whole = super().plan(round_index)
        loads = [0] * self.world_size
        for worker, steps in zip(whole.workers, whole.steps):
            loads[self.owners[worker.id]] += steps
        mine = [(w, s) for w, s in zip(whole.workers, whole.steps) if self.owners[w.id] == self.rank]
        return RankRoundPlan(
            whole.round_index,
            whole.workers,
            whole.steps,
            rank=self.rank,
            local_workers=tuple(w for w, _ in mine),
            local_steps=tuple(s for _, s in mine),
            padding=max(loads) - loads[self.rank],
        )

    def batches(self, plan: RoundPlan) -> Iterator[tuple[BaseWorker | None, Any]]:
        """This process's batches of the round, worker after worker, then its idle steps."""
        if not isinstance(plan, RankRoundPlan):
            yield from super().batches(plan)
            return
        yield from super().batches(RoundPlan(plan.round_index, plan.local_workers, plan.local_steps))
        for position in range(plan.padding):
            yield None, IdleBatch(plan.round_index, position)


# -- checkpoints ----------------------------------------------------------------------------------------------------
_PER_PROCESS = ("rng", "aggregator")  # what each process keeps of its own and resumes from


def gather_state(state: dict[str, Any], collective: Collective) -> dict[str, Any]:
    """The federated checkpoint state of every process as one (called in every process; process 0 writes it).

    Each worker's sealed state comes from the process that trains the worker; the per-process entries (RNG states,
    the aggregator's server-side state, such as the DP noise stream) are kept for each process under
    ``"processes"``.
    """
    if collective.world_size == 1:
        return state
    parts = collective.all_gather_object(state)
    merged = dict(parts[0])
    merged["worker_states"] = {w: s for part in parts for w, s in part.get("worker_states", {}).items()}
    merged["processes"] = [{key: part.get(key) for key in _PER_PROCESS} for part in parts]
    return merged


def select_state(state: dict[str, Any], collective: Collective) -> dict[str, Any]:
    """This process's view of a checkpoint written by :func:`gather_state` (or by one process)."""
    processes = state.get("processes")
    if not processes:
        return state
    if len(processes) == collective.world_size:
        return {**state, **processes[collective.rank]}
    warn(
        f"This checkpoint was written by a run over {len(processes)} processes and resumes over "
        f"{collective.world_size}: every process takes the RNG state and the aggregator's per-process state of "
        "process 0. Resume with the same "
        "devices * num_nodes to continue exactly."
    )
    return {**state, **processes[0]}


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among ``world_size`` processes (``devices`` per node, ``num_nodes``)
    and the collectives they share."""

    rank: int
    world_size: int
    devices: int
    num_nodes: int
    collective: Collective | None


class DistributedBackend(SequentialBackend):
    """FedAvg rounds over several processes: each trains its own workers, one after another, and the processes meet
    once a round (see the module docstring)."""

    name = "distributed"

    def __init__(self, *args: Any, processes: Processes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processes = processes
        self.rounds.sync = self.sync_round

    def make_planner(self, loader: FederatedDataLoader) -> RoundPlanner:
        where = self.processes
        planner = RankRoundPlanner(
            loader, rank=where.rank, world_size=where.world_size, devices=where.devices, num_nodes=where.num_nodes,
            **self.planner_args(loader),
        )  # fmt: skip
        if self.planner is None:
            shares = []
            for rank in range(planner.world_size):
                mine = [w for w in planner.workers if planner.owners[w.id] == rank]
                samples = sum(len(loader.federated_dataset[w.id]) for w in mine)
                shares.append(f"process {rank}: {[w.id for w in mine]} ({samples} samples)")
            info(f"FederatedStrategy over {planner.world_size} processes; " + "; ".join(shares) + ".")
            collective = where.collective
            if collective is not None:  # None only when the processes were not started (a test of the checks)
                collective.owners = dict(planner.owners)
                self.rounds.aggregator.setup_processes(collective)
        place_workers(loader, planner)
        return planner

    def batch_start(self, batch: Any) -> Any:
        if not isinstance(batch, IdleBatch):
            return super().batch_start(batch)
        self.open_step(batch)  # this process waits for the busiest one: count the step, train nothing
        self.step_schedulers.decide(None)  # and no worker's schedule steps
        self.skip = True
        return batch

    def sync_round(self, rounds: Rounds) -> None:
        """At the end of each round, in every process: combine the bookkeeping, then the aggregator's sums."""
        collective = self.processes.collective
        if collective is None or collective.world_size == 1:
            return
        assert self.planner is not None
        mine = [w for w, r in collective.owners.items() if r == collective.rank]
        reports = collective.all_gather_object(rounds.report(mine))
        rounds.merge(reports, [w.id for w in self.planner.workers])
        rounds.aggregator.sync_round(collective)

    def teardown(self) -> None:
        super().teardown()
        if self.loader is not None:
            place_workers(self.loader, None)


def place_workers(loader: FederatedDataLoader, planner: RankRoundPlanner | None) -> None:
    """Pointers do not cross processes: a worker that trains in another process refuses messages here."""
    for worker in loader.workers:
        owner = planner.owners.get(worker.id) if planner is not None else None
        if owner is None or planner is None or owner == planner.rank:
            worker.place_elsewhere(None)
            continue
        mine = [w.id for w in planner.local_workers]
        worker.place_elsewhere(
            f"worker {worker.id!r} trains in process {owner} and this is process {planner.rank} (devices * "
            f"num_nodes = {planner.world_size}): pointers do not cross processes. During fit, this process reaches "
            f"only its own workers {mine}; use one of those, or run in one process (devices=1, num_nodes=1)."
        )
