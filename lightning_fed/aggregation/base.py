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

    # -- worker-side hooks (run at the worker, inside its training; defaults do nothing) ---------------------------
    def worker_start(self, worker_id: Hashable, global_tensors: Sequence[Tensor]) -> None:
        """A worker starts its local training from ``global_tensors`` (parameters first, then buffers)."""

    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        """After each local backward, before clipping and the optimizer step: edit ``p.grad`` in place."""

    def worker_update(self, worker_id: Hashable, update: list[Tensor], num_steps: int, lr: float) -> list[Tensor]:
        """Turn a worker's raw update (``local - global``) into what it sends; runs at the worker."""
        return update

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
