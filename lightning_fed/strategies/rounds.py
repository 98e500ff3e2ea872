"""Round planning for FedAvg-style training: which workers take part in a round and which batches each one trains.

Everything here is a pure function of (seed, round), so a run is reproducible and a resumed run continues exactly:
no random state needs saving.

Example:
    >>> sample_clients(num_workers=10, clients_per_round=3, seed=0, round_index=0)
    [1, 3, 5]
    >>> resolve_clients_per_round(0.25, num_workers=10)
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


def resolve_clients_per_round(value: int | float | None, num_workers: int) -> int:
    """How many workers a round samples: ``None`` -> all, an int ``k`` -> k, a float in (0, 1] -> that fraction."""
    if value is None:
        return num_workers
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` is not valid: pass an int in [1, {num_workers}], a fraction in (0, 1], "
            "or None for all workers."
        )
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise FederatedConfigError(
                f"`clients_per_round={value!r}` is not valid: a fraction must be in (0, 1] (or pass an int count)."
            )
        return max(1, math.floor(value * num_workers + 0.5))  # round half up: 0.25 of 10 -> 3
    if not 1 <= value <= num_workers:
        raise FederatedConfigError(
            f"`clients_per_round={value!r}` is out of range: there are {num_workers} workers, so pass an int in "
            f"[1, {num_workers}], a fraction in (0, 1], or None for all."
        )
    return value


def sample_clients(num_workers: int, clients_per_round: int, seed: int, round_index: int) -> list[int]:
    """The (sorted) positions of the workers taking part in round ``round_index``; all of them when k == n."""
    if clients_per_round >= num_workers:
        return list(range(num_workers))
    rng = np.random.default_rng(mix_seed(seed, round_index, _SAMPLING_STREAM))
    return sorted(int(i) for i in rng.choice(num_workers, size=clients_per_round, replace=False))


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
        clients_per_round: int | float | None,
        local_epochs: int,
        local_steps: int | None,
        seed: int,
    ) -> None:
        self.loader = loader
        self.workers = list(loader.workers)
        self.clients_per_round = resolve_clients_per_round(clients_per_round, len(self.workers))
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.seed = seed
        # where a worker's batches for an epoch come from (differential privacy swaps in Poisson-sampled batches)
        self.batch_source: Callable[[BaseWorker, int], Iterator[Any]] = loader.worker_batches
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
        return RoundPlan(round_index, workers, tuple(self.steps_for(w) for w in workers))

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

    def worker_batches(self, worker: BaseWorker, steps: int, round_index: int) -> Iterator[Any]:
        """``worker``'s ``steps`` batches of round ``round_index``, cycling its shard (reshuffled each pass)."""
        per_pass = self.loader.num_batches(worker)
        passes = math.ceil(steps / per_pass)
        produced = 0
        for local_pass in range(passes):
            for batch in self.batch_source(worker, round_index * passes + local_pass):
                if produced == steps:
                    return
                produced += 1
                yield batch
