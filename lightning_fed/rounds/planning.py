"""Round planning for FedAvg-style training: which workers take part in a round and which batches each one trains.

Everything here is a pure function of (seed, round), so a run is reproducible and a resumed run continues exactly:
no random state needs saving.

Example:
    >>> limit_steps([10, 4], 0.5)
    [5, 2]
    >>> sample_clients(num_workers=10, clients_per_round=3, seed=0, round_index=0)
    [1, 3, 5]
    >>> resolve_clients_per_round(None, num_workers=10, fraction=0.25)
    3
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_fed.data.loader import FederatedDataLoader, mix_seed
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker

_SAMPLING_STREAM = 0x5A3  # keeps client sampling independent of the loader's shuffling streams


def resolve_clients_per_round(value: int | None, num_workers: int, fraction: float | None = None) -> int:
    """How many workers a round samples: a count ``value``, or a ``fraction`` of them (rounded half up), or all.

    The two are separate arguments so that a command line or YAML file cannot turn one into the other (``1`` is a
    count of one worker, never a fraction of 1.0).
    """
    if value is not None and fraction is not None:
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` and `client_fraction={fraction!r}` both choose how many workers a round "
            "samples: pass one of them."
        )
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise FederatedConfigError(
                f"`client_fraction={fraction!r}` is not valid: pass the fraction of workers a round samples, in "
                "(0, 1] (or clients_per_round=<count>)."
            )
        return max(1, math.floor(fraction * num_workers + 0.5))  # round half up: 0.25 of 10 -> 3
    if value is None:
        return num_workers
    if isinstance(value, float) and not isinstance(value, bool):
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` is not valid: it is a count of workers, an int in [1, {num_workers}]; "
            f"for a fraction of the workers pass client_fraction={value!r}."
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` is not valid: pass an int in [1, {num_workers}], or None for all workers "
            "(client_fraction=<fraction> samples a fraction)."
        )
    if not 1 <= value <= num_workers:
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` is out of range: there are {num_workers} workers, so pass an int in "
            f"[1, {num_workers}], client_fraction=<fraction in (0, 1]>, or None for all."
        )
    return value


def sample_clients(num_workers: int, clients_per_round: int, seed: int, round_index: int) -> list[int]:
    """The (sorted) positions of the workers taking part in round ``round_index``; all of them when k == n."""
    if clients_per_round >= num_workers:
        return list(range(num_workers))
    rng = np.random.default_rng(mix_seed(seed, round_index, _SAMPLING_STREAM))
    return sorted(int(i) for i in rng.choice(num_workers, size=clients_per_round, replace=False))


def limit_steps(steps: list[int], limit: int | float | None) -> list[int]:
    """Each worker's local batches under Lightning's ``limit_train_batches`` (or ``fast_dev_run``).

    A fraction ``f`` trains ``f`` of every worker's local work (at least one batch each); an int ``k`` caps the
    round at about ``k`` batches, shared among the workers in proportion to their work (at least one each). Never
    silently one worker: every sampled worker trains.
    """
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return list(steps)
    if isinstance(limit, float):
        return [max(1, int(s * limit)) for s in steps]
    total = sum(steps)
    if limit >= total:
        return list(steps)
    return [max(1, s * int(limit) // total) for s in steps]


@dataclass(frozen=True)
class RoundPlan:
    """One round: the participating workers, in order, and how many batches each trains."""

    round_index: int
    workers: tuple[BaseWorker, ...]
    steps: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


class RoundPlanner:
    """Plans rounds over a :class:`FederatedDataLoader`: client sampling and local epochs or local steps."""

    def __init__(
        self,
        loader: FederatedDataLoader,
        *,
        clients_per_round: int | None,
        local_epochs: int,
        local_steps: int | None,
        seed: int,
        limit: int | float | None = None,
        client_fraction: float | None = None,
    ) -> None:
        self.loader = loader
        self.workers = list(loader.workers)
        self.clients_per_round = resolve_clients_per_round(clients_per_round, len(self.workers), client_fraction)
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.seed = seed
        self.limit = limit  # Lightning's limit_train_batches, applied to every worker's local work
        # where a worker's batches for an epoch come from, as pointer batches and as positions in its shard for the
        # loops that gather at the worker (differential privacy swaps in Poisson-sampled ones)
        self.batch_source: Callable[[BaseWorker, int], Iterator[Any]] = loader.worker_batches
        self.position_source: Callable[[BaseWorker, int], Iterator[Any]] = loader.batch_positions
        for worker in self.workers:
            if loader.num_batches(worker) == 0:
                samples = len(loader.federated_dataset[worker.id])
                raise FederatedConfigError(
                    f"worker {worker.id!r} has no data to train on: {samples} samples give 0 batches of "
                    f"batch_size={loader.batch_size} (drop_last={loader.drop_last}). Give it data in the partition, "
                    "lower batch_size, or set drop_last=False."
                )

    def plan(self, round_index: int) -> RoundPlan:
        chosen = sample_clients(len(self.workers), self.clients_per_round, self.seed, round_index)
        workers = tuple(self.workers[i] for i in chosen)
        steps = limit_steps([self.steps_for(w) for w in workers], self.limit)
        return RoundPlan(round_index, workers, tuple(steps))

    @property
    def lengths_vary(self) -> bool:
        """Whether rounds can differ in length (client sampling over workers with different amounts of work)."""
        return self.clients_per_round < len(self.workers) and len({self.steps_for(w) for w in self.workers}) > 1

    def steps_for(self, worker: BaseWorker) -> int:
        """The batches ``worker`` trains in a round it takes part in."""
        if self.local_steps is not None:
            return self.local_steps
        return self.local_epochs * self.loader.num_batches(worker)

    def batches(self, plan: RoundPlan) -> Iterator[tuple[BaseWorker, Any]]:
        """The round's batches, worker after worker, each worker cycling its shard (reshuffled) as needed."""
        for worker, steps in zip(plan.workers, plan.steps):
            for batch in self.worker_batches(worker, steps, plan.round_index):
                yield worker, batch

    def worker_batches(self, worker: BaseWorker, steps: int, round_index: int,
                       source: Callable[[BaseWorker, int], Iterator[Any]] | None = None) -> Iterator[Any]:  # fmt: skip
        """``worker``'s ``steps`` batches of round ``round_index``, cycling its shard (reshuffled each pass);
        ``source``: where an epoch's batches come from (default :attr:`batch_source`)."""
        source = self.batch_source if source is None else source
        per_pass = self.loader.num_batches(worker)
        passes = math.ceil(steps / per_pass)
        produced = 0
        for local_pass in range(passes):
            for batch in source(worker, round_index * passes + local_pass):
                if produced == steps:
                    return
                produced += 1
                yield batch
