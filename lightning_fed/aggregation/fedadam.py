"""FedAdam (Reddi et al. 2021): Adam's second moment on the server."""

from __future__ import annotations

from lightning_fed.aggregation.fedopt import FedOpt
from lightning_fed.aggregation.functional import adam_second_moment


class FedAdam(FedOpt):
    """FedOpt with ``v = beta2 * v + (1 - beta2) * delta**2`` (defaults as Flower's: ``server_lr=0.1``,
    ``beta1=0.9``, ``beta2=0.99``, ``tau=1e-9``). See :class:`~lightning_fed.aggregation.FedOpt`.

    Example:
        >>> import torch
        >>> agg = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
        >>> agg.begin_round([torch.zeros(1)])
        >>> agg.accumulate([torch.tensor([1.0])], weight=1, worker_id="a")
        >>> agg.finalize([torch.zeros(1)])  # m = 0.1, v = 0.01: 0.1 * 0.1 / (0.1 + 0.001)
        [tensor([0.0990])]
    """

    name = "fedadam"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    second_moment = staticmethod(adam_second_moment)
