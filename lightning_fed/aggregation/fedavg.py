"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the workers' models."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.functional import accumulate_, apply_update, mean_update, zeros_like_sums
from lightning_fed.exceptions import LightningFedError

if TYPE_CHECKING:
    from lightning_fed.collective import Collective


class FedAvg(Aggregator):
    """Weighted mean of updates: ``global + sum_k n_k * update_k / sum_k n_k``, summed first, divided at the end.

    The base of every sum-like aggregator here (FedAvgM, FedOpt, FedProx, SCAFFOLD): they reuse its running sums and
    post-process the mean update in :meth:`apply`.

    Example:
        >>> import torch
        >>> agg = FedAvg()
        >>> agg.begin_round([torch.zeros(2)])
        >>> agg.accumulate([torch.tensor([1.0, 1.0])], weight=1, worker_id="a")
        >>> agg.accumulate([torch.tensor([3.0, 5.0])], weight=3, worker_id="b")
        >>> agg.finalize([torch.zeros(2)])
        [tensor([2.5000, 4.0000])]
    """

    name = "fedavg"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    round_state = ("_sums", "_total", "_count")

    def __init__(self) -> None:
        self._sums: list[Tensor] | None = None
        self._total = 0.0
        self._count = 0

    @override
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        self._sums = zeros_like_sums(global_tensors)
        self._total = 0.0
        self._count = 0

    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        if self._sums is None:
            raise LightningFedError(
                f"{type(self).__name__}.accumulate() before begin_round(): the strategy drives this order."
            )
        accumulate_(self._sums, update, weight)
        self._total += float(weight)
        self._count += 1

    @property
    @override
    def num_contributions(self) -> int:
        return self._count

    @override
    def sync_round(self, collective: Collective) -> None:
        """Add up the weighted sums, total weight and count of every process (float64, one ``all_reduce``)."""
        if self._sums is None:
            raise LightningFedError(f"{type(self).__name__}.sync_round() before begin_round(): the strategy drives it.")
        meta = torch.tensor([self._total, float(self._count)], dtype=torch.float64)
        *sums, meta = collective.all_reduce_sum([*self._sums, meta])
        self._sums = sums
        self._total, self._count = float(meta[0]), round(float(meta[1]))

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        if self._sums is None or self._total <= 0:
            raise LightningFedError("no worker contributed to this round: nothing to aggregate.")
        delta = mean_update(self._sums, self._total)
        self._sums = None
        return self.apply(global_tensors, delta)

    def apply(self, global_tensors: Sequence[Tensor], mean_delta: list[Tensor]) -> list[Tensor]:
        """The new global tensors from the round's weighted mean update (FedAvg: ``global + mean_delta``)."""
        return apply_update(global_tensors, mean_delta)
