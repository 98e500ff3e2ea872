"""FedTrimmedAvg (Yin et al. 2018): the coordinate-wise beta-trimmed mean."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.functional import trimmed_mean
from lightning_fed.aggregation.robust import RobustAggregator
from lightning_fed.exceptions import FederatedConfigError


class FedTrimmedAvg(RobustAggregator):
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest of the ``n`` updates and average the rest
    (unweighted, so ``beta=0`` is the plain mean, FedAvg only for equal shards). Not a sum.

    Args:
        beta: the fraction trimmed at each end, in [0, 0.5).

    Example:
        >>> import torch
        >>> agg = FedTrimmedAvg(beta=0.2)
        >>> agg.begin_round([torch.zeros(1)])
        >>> for worker, value in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("evil", 1000.0)]:
        ...     agg.accumulate([torch.tensor([value])], weight=1, worker_id=worker)
        >>> agg.finalize([torch.zeros(1)])
        [tensor([3.])]
    """

    name = "fedtrimmedavg"

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise FederatedConfigError(
                f"FedTrimmedAvg `beta={beta!r}` is not valid: pass the fraction trimmed at each end, in [0, 0.5)."
            )
        self.beta = float(beta)

    @override
    def combine(
        self, updates: list[list[Tensor]], weights: list[float], global_tensors: Sequence[Tensor]
    ) -> list[Tensor]:
        return trimmed_mean(updates, self.beta)

    @override
    def __repr__(self) -> str:
        return f"FedTrimmedAvg(beta={self.beta})"
