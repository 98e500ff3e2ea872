"""Krum and multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent")."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.functional import accumulate_, is_float, krum_select, zeros_like_sums
from lightning_fed.aggregation.robust import RobustAggregator
from lightning_fed.exceptions import FederatedConfigError


def _int_at_least(value: object, arg: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FederatedConfigError(f"Krum `{arg}={value!r}` is not valid: pass an integer >= {low}.")
    return value


class Krum(RobustAggregator):
    """Pick the update(s) closest to their neighbours and average those.

    Each update's score is the sum of squared distances to its ``n - f - 2`` nearest other updates (floating tensors
    only: integer buffers do not count in distances); Krum keeps the best one, multi-Krum (``num_selected=m > 1``) the
    ``m`` best and takes their sample-weighted mean (summed, divided at the end). Tolerates ``f`` Byzantine workers
    when ``n >= 2f + 3``. Not a sum.

    Args:
        num_byzantine: ``f``, the number of Byzantine workers to tolerate (>= 0).
        num_selected: ``m``, how many updates to average (1 is Krum).

    Example:
        >>> import torch
        >>> agg = Krum(num_byzantine=1)
        >>> agg.begin_round([torch.zeros(1)])
        >>> for worker, value in [("a", 1.0), ("b", 1.1), ("c", 0.9), ("d", 1.2), ("evil", -50.0)]:
        ...     agg.accumulate([torch.tensor([value])], weight=1, worker_id=worker)
        >>> agg.finalize([torch.zeros(1)]), agg.selected
        ([tensor([1.])], ['a'])
    """

    name = "krum"

    def __init__(self, num_byzantine: int = 1, num_selected: int = 1) -> None:
        super().__init__()
        self.num_byzantine = _int_at_least(num_byzantine, "num_byzantine", 0)
        self.num_selected = _int_at_least(num_selected, "num_selected", 1)
        self.selected: list = []  # the worker ids chosen in the last round, best first

    def min_clients(self) -> int:
        """The fewest updates a round needs: ``2f + 3`` and at least ``num_selected``."""
        return max(2 * self.num_byzantine + 3, self.num_selected)

    @override
    def check_num_clients(self, num_clients: int) -> None:
        if num_clients < self.min_clients():
            raise FederatedConfigError(
                f"Krum(num_byzantine={self.num_byzantine}, num_selected={self.num_selected}) needs at least "
                f"{self.min_clients()} updates per round (n >= 2f + 3 and n >= m), got {num_clients}: sample more "
                "clients per round (`clients_per_round`) or lower `num_byzantine`/`num_selected`."
            )

    @override
    def combine(
        self, updates: list[list[Tensor]], weights: list[float], global_tensors: Sequence[Tensor]
    ) -> list[Tensor]:
        if len(updates) < self.min_clients():
            raise FederatedConfigError(
                f"{self!r} got {len(updates)} updates this round and needs at least {self.min_clients()} (n >= 2f + 3 "
                "and n >= m): workers failed or dropped out. Pass FederatedStrategy(min_clients="
                f"{self.min_clients()}) to stop with the round's survivors named, or lower `num_byzantine`."
            )
        include = [is_float(g) for g in global_tensors]
        chosen = krum_select(updates, self.num_byzantine, self.num_selected, include=include)
        self.selected = [self._worker_ids[i] for i in chosen]
        sums = zeros_like_sums(updates[0])
        for i in chosen:
            accumulate_(sums, updates[i], weights[i])
        total = sum(weights[i] for i in chosen)
        return [s / total for s in sums]

    @override
    def __repr__(self) -> str:
        return f"Krum(num_byzantine={self.num_byzantine}, num_selected={self.num_selected})"
