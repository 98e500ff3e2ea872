"""FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"): server momentum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.aggregation.functional import apply_update, server_momentum_step
from lightning_fed.exceptions import FederatedConfigError


class FedAvgM(FedAvg):
    """FedAvg with momentum on the server: ``v = momentum * v + delta``; ``x = x + server_lr * v``.

    ``delta`` is the round's sample-weighted mean update (``-delta`` is the pseudo-gradient), summed first and divided
    at the end as in FedAvg. With ``momentum=0`` and ``server_lr=1`` this is FedAvg exactly. Buffers
    (BatchNorm's running statistics and ``num_batches_tracked``) take the plain weighted mean. The momentum buffers are
    saved in checkpoints.

    Args:
        server_lr: the server learning rate (> 0).
        momentum: the server momentum, in [0, 1).

    Example:
        >>> import torch
        >>> agg = FedAvgM(server_lr=1.0, momentum=0.5)
        >>> for _ in range(2):
        ...     agg.begin_round([torch.zeros(1)])
        ...     agg.accumulate([torch.tensor([2.0])], weight=1, worker_id="a")
        ...     print(agg.finalize([torch.zeros(1)]))
        [tensor([2.])]
        [tensor([3.])]
    """

    name = "fedavgm"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) or not server_lr > 0:
            raise FederatedConfigError(f"FedAvgM `server_lr={server_lr!r}` is not valid: pass a number > 0.")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise FederatedConfigError(f"FedAvgM `momentum={momentum!r}` is not valid: pass a number in [0, 1).")
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: list[Tensor | None] | None = None

    @override
    def apply(self, global_tensors: Sequence[Tensor], mean_delta: list[Tensor]) -> list[Tensor]:
        previous = self._velocity or [None] * len(mean_delta)
        velocity: list[Tensor | None] = []
        steps = []
        for i, (g, delta, v) in enumerate(zip(global_tensors, mean_delta, previous)):
            if not self.is_param(i, g):  # buffers (integer or running statistics): the weighted mean
                velocity.append(None)
                steps.append(delta)
                continue
            v = server_momentum_step(None if v is None else v.to(delta.device), delta, self.momentum)
            velocity.append(v)
            steps.append(v * self.server_lr)
        self._velocity = velocity
        return apply_update(global_tensors, steps)

    @override
    def state_dict(self) -> dict[str, Any]:
        velocity = None if self._velocity is None else [None if v is None else v.clone() for v in self._velocity]
        return {"velocity": velocity}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        velocity = state.get("velocity")
        self._velocity = None if velocity is None else [None if v is None else v.clone() for v in velocity]

    @override
    def __repr__(self) -> str:
        return f"FedAvgM(server_lr={self.server_lr}, momentum={self.momentum})"
