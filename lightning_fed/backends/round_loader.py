"""What Lightning iterates in FedAvg mode: one round's batches.

A Lightning epoch is a round. :class:`RoundLoader` has the length of the coming round and yields its batches; it
plans nothing itself: the backend plans the round for the epoch Lightning is about to run (``fit_loop``'s public
epoch progress), and begins it when its first batch reaches the strategy. When rounds differ in length (client
sampling over workers with different amounts of work) the strategy asks Lightning to rebuild the train loader every
epoch (``reload_dataloaders_every_n_epochs=1``), so each round's length is read afresh through public settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from lightning_fed.rounds.planning import RoundPlan


class RoundSource(Protocol):
    def upcoming_plan(self) -> RoundPlan: ...

    def round_length(self, plan: RoundPlan) -> int: ...

    def round_batches(self, plan: RoundPlan) -> Iterator[Any]: ...


class RoundLoader:
    """An iterable over one round's batches, as its backend plans them (see the module docstring)."""

    def __init__(self, source: RoundSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.round_length(self.source.upcoming_plan())

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        plan = self.source.upcoming_plan()  # lazily, at the first batch: the epoch is Lightning's by then
        yield from self.source.round_batches(plan)
