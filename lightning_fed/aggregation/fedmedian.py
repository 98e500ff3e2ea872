"""FedMedian (Yin et al. 2018, "Byzantine-Robust Distributed Learning"): the coordinate-wise median."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.functional import coordinate_median
from lightning_fed.aggregation.robust import RobustAggregator


class FedMedian(RobustAggregator):
    """The new model is ``global + median(updates)`` per coordinate (unweighted; for an even number of updates the
    mean of the two middle values). Robust to fewer than half the workers sending anything. Not a sum.

    Example:
        >>> import torch
        >>> agg = FedMedian()
        >>> agg.begin_round([torch.zeros(1)])
        >>> for worker, value in [("a", 1.0), ("b", 2.0), ("evil", 1000.0)]:
        ...     agg.accumulate([torch.tensor([value])], weight=1, worker_id=worker)
        >>> agg.finalize([torch.zeros(1)])
        [tensor([2.])]
    """

    name = "fedmedian"

    @override
    def combine(
        self, updates: list[list[Tensor]], weights: list[float], global_tensors: Sequence[Tensor]
    ) -> list[Tensor]:
        return coordinate_median(updates)
