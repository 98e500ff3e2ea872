"""FedYogi (Reddi et al. 2021): Yogi's additive, sign-controlled second moment on the server."""

from __future__ import annotations

from lightning_fed.aggregation.fedopt import FedOpt
from lightning_fed.aggregation.functional import yogi_second_moment


class FedYogi(FedOpt):
    """FedOpt with ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)`` (defaults as Flower's: ``server_lr=0.01``,
    ``beta1=0.9``, ``beta2=0.99``, ``tau=1e-3``). See :class:`~lightning_fed.aggregation.FedOpt`.

    Example:
        >>> import torch
        >>> agg = FedYogi(server_lr=0.01, tau=1e-3)
        >>> agg.begin_round([torch.zeros(1)])
        >>> agg.accumulate([torch.tensor([1.0])], weight=1, worker_id="a")
        >>> agg.finalize([torch.zeros(1)])  # m = 0.1, v = 0 + 0.01 * 1: 0.01 * 0.1 / (0.1 + 0.001)
        [tensor([0.0099])]
    """

    name = "fedyogi"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    second_moment = staticmethod(yogi_second_moment)

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_accumulator: float = 0.0,
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau, initial_accumulator)
