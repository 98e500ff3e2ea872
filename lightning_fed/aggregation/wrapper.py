"""``AggregatorWrapper``: an aggregator around another one (``.inner``), passing every hook on by default.

Secure aggregation and differential privacy are such wrappers: each overrides only what it changes.

Example:
    >>> from lightning_fed.aggregation import FedAvg
    >>> wrapped = AggregatorWrapper(FedAvg())
    >>> wrapped.setup_model(3)
    >>> wrapped.num_params, wrapped.inner.num_params, wrapped.is_sum
    (3, 3, True)
    >>> [type(a).__name__ for a in aggregator_chain(wrapped)]
    ['AggregatorWrapper', 'FedAvg']
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator

if TYPE_CHECKING:
    from lightning_fed.collective import Collective


_MAX_CHAIN = 16  # wrappers deeper than this are taken for a cycle


def aggregator_chain(aggregator: Aggregator | None) -> Iterator[Aggregator]:
    """``aggregator`` and the aggregators it wraps (each wrapper's ``.inner``), outermost first."""
    for _ in range(_MAX_CHAIN):
        if aggregator is None:
            return
        yield aggregator
        aggregator = getattr(aggregator, "inner", None)


class AggregatorWrapper(Aggregator):
    """Passes every hook on to ``inner``; subclasses override the ones they change."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.is_sum = inner.is_sum  # type: ignore[misc]

    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        self.inner.setup(worker_ids)

    @override
    def setup_model(self, num_params: int) -> None:
        super().setup_model(num_params)
        self.inner.setup_model(num_params)

    @override
    def check_num_clients(self, num_clients: int) -> None:
        self.inner.check_num_clients(num_clients)

    def set_participants(self, worker_ids: Sequence[Hashable]) -> None:
        """The next round's workers, passed on to an inner aggregator that needs them (secure aggregation)."""
        forward = getattr(self.inner, "set_participants", None)
        if callable(forward):
            forward(worker_ids)

    def drop(self, worker_id: Hashable) -> None:
        """``worker_id`` failed before sending its update (passed on to an inner aggregator that tracks it)."""
        forward = getattr(self.inner, "drop", None)
        if callable(forward):
            forward(worker_id)

    @override
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        self.inner.begin_round(global_tensors)

    @property
    def resumable_mid_round(self) -> bool:  # type: ignore[override]
        return self.inner.resumable_mid_round

    @override
    def worker_state_dict(self, worker_id: Hashable) -> dict[str, Any]:
        return self.inner.worker_state_dict(worker_id)

    def load_worker_state_dict(self, worker_id: Hashable, state: dict[str, Any]) -> None:
        self.inner.load_worker_state_dict(worker_id, state)

    def round_state_dict(self) -> dict[str, Any]:
        return {**super().round_state_dict(), "inner": self.inner.round_state_dict()}

    @override
    def load_round_state_dict(self, state: dict[str, Any]) -> None:
        super().load_round_state_dict(state)
        self.inner.load_round_state_dict(state.get("inner", {}))

    @override
    def worker_start(self, worker_id: Hashable, global_tensors: Sequence[Tensor]) -> None:
        self.inner.worker_start(worker_id, global_tensors)

    @override
    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        self.inner.adjust_gradients(worker_id, params, global_params)

    @override
    def worker_update(self, worker_id: Hashable, update: list[Tensor], num_steps: int, lr: float) -> list[Tensor]:
        return self.inner.worker_update(worker_id, update, num_steps, lr)

    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        self.inner.accumulate(update, weight, worker_id)

    @property
    @override
    def num_contributions(self) -> int:
        return self.inner.num_contributions

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        return self.inner.finalize(global_tensors)

    @override
    def check_processes(self) -> None:
        self.inner.check_processes()

    @override
    def setup_processes(self, collective: Collective) -> None:
        self.inner.setup_processes(collective)

    @override
    def sync_round(self, collective: Collective) -> None:
        """A wrapper that only passes hooks on keeps no state of its own: the inner aggregator combines the round.
        A wrapper that does keep some (in ``accumulate``) must combine it here too."""
        self.inner.sync_round(collective)


def gradient_editors(aggregator: Aggregator | None) -> list[Aggregator]:
    """The aggregators in ``aggregator``'s chain that edit gradients at the workers (their own ``adjust_gradients``:
    FedProx, SCAFFOLD, sample-level DP), outermost first."""
    plain = (Aggregator.adjust_gradients, AggregatorWrapper.adjust_gradients)
    return [agg for agg in aggregator_chain(aggregator) if type(agg).adjust_gradients not in plain]
