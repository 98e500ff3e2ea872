"""FedAdagrad (Reddi et al. 2021): Adagrad's accumulated second moment on the server."""

from __future__ import annotations

from typing_extensions import override

from lightning_fed.aggregation.fedopt import FedOpt
from lightning_fed.aggregation.functional import adagrad_second_moment


class FedAdagrad(FedOpt):
    """FedOpt with ``v = v + delta**2`` (no ``beta2``; defaults ``server_lr=0.1``, ``beta1=0.9``, ``tau=1e-9``).
    See :class:`~lightning_fed.aggregation.FedOpt`.

    Example:
        >>> import torch
        >>> agg = FedAdagrad(server_lr=0.1, beta1=0.0)
        >>> agg.begin_round([torch.zeros(1)])
        >>> agg.accumulate([torch.tensor([2.0])], weight=1, worker_id="a")
        >>> agg.finalize([torch.zeros(1)])  # m = 2, v = 4: 0.1 * 2 / 2
        [tensor([0.1000])]
    """

    name = "fedadagrad"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    second_moment = staticmethod(adagrad_second_moment)

    def __init__(
        self, server_lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-9, initial_accumulator: float = 0.0
    ) -> None:
        super().__init__(server_lr, beta1, 0.0, tau, initial_accumulator)

    @override
    def __repr__(self) -> str:
        return (
            f"FedAdagrad(server_lr={self.server_lr}, beta1={self.beta1}, tau={self.tau}, "
            f"initial_accumulator={self.initial_accumulator})"
        )
