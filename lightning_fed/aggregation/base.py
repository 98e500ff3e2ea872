"""The aggregator interface the strategy drives, once per round.

``setup(worker_ids)`` once, then per round: ``begin_round(global)`` -> for each worker that finished:
``accumulate(update, weight, worker_id)`` -> ``finalize(global)`` returns the new global tensors. At the workers,
``worker_start``, ``adjust_gradients`` (once per local optimizer step) and ``worker_update`` run inside training.
Updates are ``local - global`` deltas, one tensor per model tensor (parameters and buffers, in the model's order).
``is_sum`` says whether the aggregator is a weighted sum, which secure aggregation and DP noise need.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError

if TYPE_CHECKING:
    from lightning_fed.collective import Collective


class Aggregator(ABC):
    """Turns the round's worker updates into the next global model.

    Example:
        >>> import torch
        >>> class Last(Aggregator):  # keeps the last update it saw
        ...     def begin_round(self, global_tensors):
        ...         self.update = None
        ...     def accumulate(self, update, weight, worker_id):
        ...         self.update = list(update)
        ...     def finalize(self, global_tensors):
        ...         return [g + u for g, u in zip(global_tensors, self.update)]
        >>> agg = Last()
        >>> agg.begin_round([torch.zeros(1)])
        >>> agg.accumulate([torch.ones(1)], weight=1, worker_id="a")
        >>> agg.finalize([torch.zeros(1)]), agg.is_sum
        ([tensor([1.])], True)
    """

    is_sum: ClassVar[bool] = True
    # the attributes that hold an open round's accumulation (see round_state_dict); like torchmetrics' add_state,
    # a class declares its state and the base class saves and restores it
    round_state: ClassVar[tuple[str, ...]] = ()
    # whether an open round can be saved and continued (False: its state is a live protocol, not values)
    resumable_mid_round: ClassVar[bool] = True
    name: ClassVar[str] = "aggregator"
    # True: worker_update() and accumulate() read the update during the call and keep no reference to its tensors,
    # so the caller may reuse their storage for the next worker. Counts only where a class declares it itself (see
    # reads_update_once()): a subclass that stores updates does not inherit it by mistake.
    reads_update_once: ClassVar[bool] = False
    num_params: int | None = None  # the model's first ``num_params`` tensors are parameters (see ``setup_model``)

    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        """The federation's workers (all of them, sampled or not), told once before training."""

    def setup_model(self, num_params: int) -> None:
        """The model's layout, told once before training: its first ``num_params`` tensors are parameters, the rest
        buffers. Server optimizers step parameters only (buffers such as BatchNorm's running statistics take the
        weighted mean); while it is unknown (``None``) every floating tensor counts as a parameter."""
        self.num_params = num_params

    def is_param(self, index: int, tensor: Tensor) -> bool:
        """Whether model tensor ``index`` is a floating parameter (what server optimizers step)."""
        return tensor.dtype.is_floating_point and (self.num_params is None or index < self.num_params)

    def check_num_clients(self, num_clients: int) -> None:
        """Raise :class:`~lightning_fed.exceptions.FederatedConfigError` if rounds of ``num_clients`` updates cannot
        be aggregated (e.g. Krum needs ``2f + 3``); the strategy calls it with the clients sampled per round."""

    @abstractmethod
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        """Reset the round's accumulators."""

    # -- worker-side hooks (run at the worker, inside its training; defaults do nothing) ---------------------------
    def worker_start(self, worker_id: Hashable, global_tensors: Sequence[Tensor]) -> None:
        """A worker starts its local training from ``global_tensors`` (parameters first, then buffers)."""

    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        """Once per local optimizer step, after backward (the last one, with gradient accumulation) and before
        clipping and the step: edit ``p.grad`` in place."""

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

    # -- several processes (FederatedStrategy with devices * num_nodes > 1) ----------------------------------------
    def check_processes(self) -> None:
        """Raise :class:`~lightning_fed.exceptions.FederatedConfigError` if this aggregator cannot combine rounds
        trained in several processes (the default: unless the class writes :meth:`sync_round`)."""
        if type(self).sync_round is Aggregator.sync_round:
            raise FederatedConfigError(
                f"aggregation={self!r} cannot combine a round trained in several processes: {type(self).__name__} "
                "does not write sync_round(collective). Run it in one process (devices=1, num_nodes=1), or give the "
                "class a sync_round() that adds up (or gathers) what each process accumulated."
            )

    def setup_processes(self, collective: Collective) -> None:
        """Several processes train the federation's workers, each its share, and ``collective`` reaches the others.
        Told once before training; then :meth:`sync_round` runs on every process before each :meth:`finalize`."""

    def sync_round(self, collective: Collective) -> None:
        """Several processes: combine what each process accumulated this round (weighted sums, weights, counts)
        so that :meth:`finalize`, which then runs on every process, returns the same new global model everywhere:
        the one a single process would have computed from all the round's updates."""
        raise NotImplementedError(f"{type(self).__name__} does not combine rounds over several processes.")

    def round_state_dict(self) -> dict[str, Any]:
        """The open round's accumulation (the attributes in :attr:`round_state`, copied), for a checkpoint taken in
        the middle of a round; :meth:`load_round_state_dict` continues the round from it.

        Example:
            >>> import torch
            >>> from lightning_fed.aggregation import FedAvg
            >>> agg = FedAvg(); agg.begin_round([torch.zeros(1)])
            >>> agg.accumulate([torch.ones(1)], weight=2, worker_id="a")
            >>> other = FedAvg(); other.begin_round([torch.zeros(1)])
            >>> other.load_round_state_dict(agg.round_state_dict())
            >>> other.finalize([torch.zeros(1)])
            [tensor([1.])]
        """
        return {name: copy.deepcopy(getattr(self, name, None)) for name in self.round_state}

    def load_round_state_dict(self, state: dict[str, Any]) -> None:
        """Continue an open round from :meth:`round_state_dict` (after :meth:`begin_round`)."""
        for name in self.round_state:
            setattr(self, name, copy.deepcopy(state.get(name)))

    def state_dict(self) -> dict[str, Any]:
        """Server-side state that must survive a checkpoint (momentum, optimizer moments...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def worker_state_dict(self, worker_id: Hashable) -> dict[str, Any]:
        """State this aggregator keeps *for a worker* at the worker (SCAFFOLD's control variate ``c_i``): it is the
        worker's, so checkpoints carry it sealed for that worker, never in the server's part. Default: none."""
        return {}

    def load_worker_state_dict(self, worker_id: Hashable, state: dict[str, Any]) -> None:
        """Undo :meth:`worker_state_dict`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def reads_update_once(aggregator: Aggregator) -> bool:
    """Whether ``aggregator``'s own class declares ``reads_update_once = True`` (inherited declarations do not count).

    Example:
        >>> from lightning_fed.aggregation import FedAvg, FedMedian
        >>> class Keeping(FedAvg):  # a user's subclass might store updates: it must opt in itself
        ...     pass
        >>> reads_update_once(FedAvg()), reads_update_once(Keeping()), reads_update_once(FedMedian())
        (True, False, False)
    """
    return bool(vars(type(aggregator)).get("reads_update_once", False))
