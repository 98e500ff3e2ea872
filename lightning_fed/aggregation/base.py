"""The aggregator interface the strategy drives, once per round.

``begin_round(global)`` -> for each worker that finished: ``accumulate(update, weight, worker_id)`` ->
``finalize(global)`` returns the new global tensors. Updates are ``local - global`` deltas, one tensor per model
tensor (parameters and buffers, in the model's order). ``is_sum`` says whether the aggregator is a weighted sum,
which secure aggregation and DP noise need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

from torch import Tensor


class Aggregator(ABC):
    """Turns the round's worker updates into the next global model."""

    is_sum: ClassVar[bool] = True
    name: ClassVar[str] = "aggregator"

    @abstractmethod
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        """Reset the round's accumulators."""

    @abstractmethod
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        """Add one worker's update (``local - global``) with its weight (its number of samples)."""

    @abstractmethod
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        """Return the new global tensors. Raises if no worker contributed."""

    @property
    def num_contributions(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        """Server-side state that must survive a checkpoint (momentum, optimizer moments...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
