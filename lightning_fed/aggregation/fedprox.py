"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): a proximal term at the workers."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.exceptions import FederatedConfigError


class FedProx(FedAvg):
    """FedAvg whose workers minimize ``loss + mu/2 * ||w - w_global||**2``, without touching ``training_step``.

    The term's gradient, ``mu * (w - w_global)``, is added to each parameter's ``.grad`` after backward and before
    gradient clipping and the optimizer step (:meth:`adjust_gradients`, once per local step): the same as adding the
    term to the loss. The server aggregates as FedAvg. The paper also counts the partial work of stragglers: pair it
    with ``FederatedStrategy(deadline_steps=k, straggler_policy="partial")`` to simulate that.

    Args:
        mu: the proximal coefficient (>= 0; 0 is FedAvg).

    Example:
        >>> import torch
        >>> agg = FedProx(mu=0.5)
        >>> w = torch.nn.Parameter(torch.tensor([3.0]))
        >>> w.grad = torch.tensor([1.0])
        >>> agg.adjust_gradients("a", [w], [torch.tensor([1.0])])
        >>> w.grad  # 1 + 0.5 * (3 - 1)
        tensor([2.])
    """

    name = "fedprox"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update

    def __init__(self, mu: float = 0.01) -> None:
        super().__init__()
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
            raise FederatedConfigError(
                f"FedProx `mu={mu!r}` is not valid: pass a number >= 0 (the proximal coefficient; 0 is FedAvg)."
            )
        self.mu = float(mu)

    @override
    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        if self.mu == 0:
            return
        with torch.no_grad():
            for p, g in zip(params, global_params):
                if p.grad is not None:
                    p.grad.add_(p.detach() - g.to(p.device, p.dtype), alpha=self.mu)

    @override
    def __repr__(self) -> str:
        return f"FedProx(mu={self.mu})"
