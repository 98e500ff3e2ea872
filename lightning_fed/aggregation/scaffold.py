"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging for Federated Learning"), option II."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.aggregation.functional import accumulation_dtype
from lightning_fed.exceptions import LightningFedError

if TYPE_CHECKING:
    from lightning_fed.collective import Collective


def _copy(tensors: Sequence[Tensor] | None) -> list[Tensor] | None:
    return None if tensors is None else [t.clone() for t in tensors]


class SCAFFOLD(FedAvg):
    """Control variates correct each worker's drift: every local gradient gets ``+ c - c_i``.

    Per round, for each sampled worker ``i`` with ``K`` local steps of learning rate ``lr`` from the global ``x`` to
    its local ``y_i``:

    * at the worker (:meth:`adjust_gradients`, once per step): ``grad += c - c_i``;
    * at its end (:meth:`worker_update`, option II): ``c_i+ = c_i - c + (x - y_i) / (K * lr)``, sending
      ``delta_c_i = c_i+ - c_i`` with its model update;
    * at the server: ``x += mean(y_i - x)`` (the sample-weighted mean, as FedAvg; the paper's global lr 1 and uniform
      mean when shards are equal) and ``c += (|S| / N) * mean(delta_c_i) = sum(delta_c_i) / N`` with ``N`` workers in
      the federation (:meth:`setup`). A sum divided at the end, like FedAvg.

    ``c`` and every ``c_i`` start at zero (so round 1 equals FedAvg), cover the model's parameters (not buffers), are
    kept in float64, and are saved in checkpoints (``c`` in the server's part, each ``c_i`` sealed for its worker:
    :meth:`worker_state_dict`). In simulation the ``c_i`` live in this object, keyed by worker id; they stand for
    state each worker keeps. ``lr`` is the first param group's learning rate: the formula assumes local
    SGD without momentum.

    Example:
        >>> import torch
        >>> agg = SCAFFOLD()
        >>> agg.setup(["a", "b"])
        >>> x = [torch.zeros(1)]
        >>> agg.begin_round(x)
        >>> update = agg.worker_update("a", [torch.tensor([-0.2])], num_steps=2, lr=0.1)  # y_a = x - 0.2
        >>> agg.accumulate(update, weight=1, worker_id="a")
        >>> agg.finalize(x), agg.control_variate("a"), agg.server_control_variate
        ([tensor([-0.2000])], [tensor([1.0000], dtype=torch.float64)], [tensor([0.5000], dtype=torch.float64)])
    """

    name = "scaffold"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    round_state = (*FedAvg.round_state, "_dc_sum")

    def __init__(self) -> None:
        super().__init__()
        self._c: list[Tensor] | None = None
        self._ci: dict[Hashable, list[Tensor]] = {}
        self._num_workers: int | None = None
        self._num_params: int | None = None
        self._correction: list[Tensor] | None = None
        self._pending: dict[Hashable, list[Tensor]] = {}
        self._dc_sum: list[Tensor] | None = None

    @property
    def server_control_variate(self) -> list[Tensor] | None:
        """The server's ``c`` (``None`` until a round has updated it)."""
        return _copy(self._c)

    def control_variate(self, worker_id: Hashable) -> list[Tensor] | None:
        """Worker ``worker_id``'s ``c_i`` (``None`` while it is still zero)."""
        return _copy(self._ci.get(worker_id))

    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        self._num_workers = len(worker_ids)

    @override
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        super().begin_round(global_tensors)
        self._pending.clear()
        self._dc_sum = None

    @override
    def worker_start(self, worker_id: Hashable, global_tensors: Sequence[Tensor]) -> None:
        self._correction = None

    @override
    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        self._num_params = self.num_params if self.num_params is not None else len(params)
        if self._c is None and worker_id not in self._ci:
            return  # both zero: nothing to add
        if self._correction is None:  # c - c_i is fixed during the worker's local training
            c = self._c or self._zeros(params)
            ci = self._ci.get(worker_id) or self._zeros(params)
            self._correction = [(cj - cij).to(p.device, p.dtype) for p, cj, cij in zip(params, c, ci)]
        with torch.no_grad():
            for p, corr in zip(params, self._correction):
                if p.grad is not None:
                    p.grad.add_(corr)

    @override
    def worker_update(self, worker_id: Hashable, update: list[Tensor], num_steps: int, lr: float) -> list[Tensor]:
        self._correction = None
        if num_steps <= 0 or lr <= 0:
            return update  # no local step: c_i stays as it was
        known = self.num_params if self.num_params is not None else self._num_params
        n = len(self._c) if self._c is not None else (known or len(update))
        params_update = update[:n]
        c = self._c or self._zeros(params_update)
        ci = self._ci.get(worker_id) or self._zeros(params_update)
        scale = 1.0 / (num_steps * lr)
        # c_i+ = c_i - c + (x - y_i) / (K lr), with update = y_i - x
        new_ci = [cij - cj - u.to(cj.dtype) * scale for cij, cj, u in zip(ci, c, params_update)]
        self._pending[worker_id] = [new - old for new, old in zip(new_ci, ci)]
        self._ci[worker_id] = new_ci
        return update

    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        super().accumulate(update, weight, worker_id)
        delta_c = self._pending.pop(worker_id, None)
        if delta_c is not None:
            if self._dc_sum is None:
                self._dc_sum = [torch.zeros_like(d) for d in delta_c]
            torch._foreach_add_(self._dc_sum, delta_c)

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        new = super().finalize(global_tensors)
        if self._dc_sum is not None:
            if self._num_workers is None:
                raise LightningFedError(
                    "SCAFFOLD needs the number of workers in the federation for `c += sum(delta_c_i) / N`: call "
                    "setup(worker_ids) first (FederatedStrategy does)."
                )
            c = self._c or [torch.zeros_like(d) for d in self._dc_sum]
            self._c = [cj + d / self._num_workers for cj, d in zip(c, self._dc_sum)]
            self._dc_sum = None
        return new

    @override
    def sync_round(self, collective: Collective) -> None:
        """FedAvg's sums, and the sum of the control-variate deltas ``delta_c_i`` (zeros from a process with none).

        Each worker's own ``c_i`` stays in the process that trains it, as it would stay at the worker."""
        super().sync_round(collective)
        assert self._sums is not None
        n = next(k for k in (self.num_params, self._num_params, len(self._sums)) if k is not None)
        mine = self._dc_sum if self._dc_sum is not None else [torch.zeros_like(s) for s in self._sums[:n]]
        flag = torch.tensor([0.0 if self._dc_sum is None else 1.0], dtype=torch.float64)
        *total, flag = collective.all_reduce_sum([*mine, flag])
        self._dc_sum = total if float(flag[0]) > 0 else None

    @staticmethod
    def _zeros(like: Sequence[Tensor]) -> list[Tensor]:
        return [torch.zeros(t.shape, dtype=accumulation_dtype(t.dtype), device=t.device) for t in like]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"c": _copy(self._c), "num_params": self._num_params}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._c = _copy(state.get("c"))
        self._ci = {}
        self._num_params = state.get("num_params")

    @override
    def worker_state_dict(self, worker_id: Hashable) -> dict[str, Any]:
        ci = self._ci.get(worker_id)
        return {} if ci is None else {"c_i": _copy(ci)}

    @override
    def load_worker_state_dict(self, worker_id: Hashable, state: dict[str, Any]) -> None:
        if state.get("c_i") is not None:
            self._ci[worker_id] = _copy(state["c_i"])  # type: ignore[assignment]

    @override
    def __repr__(self) -> str:
        return "SCAFFOLD()"
