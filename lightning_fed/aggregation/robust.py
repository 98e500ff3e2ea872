"""The base of the Byzantine-robust aggregators: they keep every update of the round, since they are not sums."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.functional import accumulation_dtype, apply_update
from lightning_fed.exceptions import LightningFedError

if TYPE_CHECKING:
    from lightning_fed.collective import Collective


class RobustAggregator(Aggregator):
    """Collects the round's updates and combines them with a rule that is not a weighted sum (median, Krum...).

    ``is_sum`` is ``False``: secure aggregation, which only ever sees the sum, cannot serve these. Subclasses write
    :meth:`combine`; the new global model is ``global + combine(...)``, integer buffers rounded.

    Example:
        >>> import torch
        >>> class Smallest(RobustAggregator):
        ...     def combine(self, updates, weights, global_tensors):
        ...         return min(updates, key=lambda u: float(u[0].abs().sum()))
        >>> agg = Smallest()
        >>> agg.begin_round([torch.zeros(1)])
        >>> agg.accumulate([torch.tensor([5.0])], weight=1, worker_id="a")
        >>> agg.accumulate([torch.tensor([-1.0])], weight=1, worker_id="b")
        >>> agg.num_contributions, agg.finalize([torch.zeros(1)])
        (2, [tensor([-1.])])
    """

    is_sum = False
    name = "robust"
    round_state = ("_updates", "_weights", "_worker_ids", "_device")

    def __init__(self) -> None:
        self._updates: list[list[Tensor]] | None = None
        self._weights: list[float] = []
        self._worker_ids: list[Hashable] = []
        self._positions: dict[Hashable, int] = {}
        self._device: torch.device | None = None

    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        self._positions = {worker_id: i for i, worker_id in enumerate(worker_ids)}

    @override
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        self._device = global_tensors[0].device if len(global_tensors) else None
        self._updates = []
        self._weights = []
        self._worker_ids = []

    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        if self._updates is None:
            raise LightningFedError(
                f"{type(self).__name__}.accumulate() before begin_round(): the strategy drives this order."
            )
        self._updates.append([u.detach().to(accumulation_dtype(u.dtype), copy=True) for u in update])
        self._weights.append(float(weight))
        self._worker_ids.append(worker_id)

    @property
    @override
    def num_contributions(self) -> int:
        return len(self._updates) if self._updates is not None else 0

    @override
    def sync_round(self, collective: Collective) -> None:
        """Gather every process's updates (not a sum: the rule needs each one), in the federation's worker order."""
        if self._updates is None:
            raise LightningFedError(f"{type(self).__name__}.sync_round() before begin_round(): the strategy drives it.")
        device = self._device
        rows = zip(self._updates, self._weights, self._worker_ids)
        mine = [([u.cpu() for u in update], weight, worker_id) for update, weight, worker_id in rows]
        entries = [entry for part in collective.all_gather_object(mine) for entry in part]
        entries.sort(key=lambda e: self._positions.get(e[2], len(self._positions)))  # stable: as one process adds them
        self._updates = [[u.to(device) if device is not None else u for u in e[0]] for e in entries]
        self._weights = [e[1] for e in entries]
        self._worker_ids = [e[2] for e in entries]

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        if not self._updates:
            raise LightningFedError("no worker contributed to this round: nothing to aggregate.")
        updates, weights = self._updates, self._weights
        self._updates = None
        return apply_update(global_tensors, self.combine(updates, weights, global_tensors))

    @abstractmethod
    def combine(
        self, updates: list[list[Tensor]], weights: list[float], global_tensors: Sequence[Tensor]
    ) -> list[Tensor]:
        """The round's update from every worker's update (float64 tensors) and weight (its number of samples)."""
