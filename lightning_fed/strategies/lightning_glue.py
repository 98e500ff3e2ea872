"""The few places lightning_fed meets Lightning's loop internals, kept in one file.

:class:`RoundLoader` is what Lightning iterates in FedAvg mode: one round's batches. Lightning's fit loop calls
``loader.sampler.set_epoch(epoch)`` before every epoch (also after a resume), which is how the strategy learns the
round about to run; iteration is lazy, so the round is planned only once that epoch is known.

:func:`sync_round_length` updates the fit loop's batch count when rounds differ in length (client sampling over
workers with different shard sizes). It touches private attributes (``fit_loop._combined_loader``): lightning_fed
bounds its Lightning version in ``pyproject.toml`` and tests this against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

if TYPE_CHECKING:
    from lightning_fed.strategies.federated import FederatedStrategy
    from lightning_fed.strategies.rounds import RoundPlanner


class _RoundClock:
    """Receives Lightning's ``set_epoch`` and tells the strategy."""

    def __init__(self, strategy: FederatedStrategy) -> None:
        self.epoch: int | None = None
        self._strategy = strategy

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._strategy._on_set_round(self.epoch)


class RoundLoader:
    """An iterable over one round's pointer batches: each sampled worker's local batches, worker after worker."""

    def __init__(self, planner: RoundPlanner, strategy: FederatedStrategy) -> None:
        self.planner = planner
        self.strategy = strategy
        self.sampler = _RoundClock(strategy)

    def _round(self) -> int:
        if self.sampler.epoch is not None:
            return self.sampler.epoch
        module = self.strategy.lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        return trainer.current_epoch if trainer is not None else 0

    def __len__(self) -> int:
        return self.strategy._round_length(self.planner.plan(self._round()))

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        plan = self.planner.plan(self._round())  # runs at the first next(), after set_epoch
        self.strategy._begin_round(plan)
        yield from self.strategy._round_batches(plan)


def sync_round_length(trainer: pl.Trainer, num_batches: int) -> None:
    """Tell the fit loop how many batches the coming round has (respecting ``limit_train_batches``)."""
    fit_loop = trainer.fit_loop
    combined = getattr(fit_loop, "_combined_loader", None)
    if combined is None:
        return
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        limited = min(num_batches, limit)
    else:
        limited = int(num_batches * limit) if limit != 1.0 else num_batches
    if fit_loop.max_batches == limited:
        return
    combined.limits = [limited]
    fit_loop.max_batches = limited
    # the fit loop derived the validation interval from the first round's length: follow the new length
    if isinstance(trainer.val_check_interval, float) and getattr(trainer, "_val_check_time_interval", None) is None:
        trainer.val_check_batch = max(1, int(limited * trainer.val_check_interval))
