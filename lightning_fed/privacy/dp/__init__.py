"""Differential privacy: client-level DP-FedAvg and sample-level DP-SGD (Opacus), with Opacus' accountants.

One switch, :class:`DPConfig`, and :func:`make_private` wraps an aggregator accordingly:

* ``DPConfig(level="client", ...)`` -> :class:`DPAggregator` (clip each worker update, noise the sum);
* ``DPConfig(level="sample", ...)`` -> :class:`DPSGDAggregator` (per-sample clipping and noise at each worker step).

Nothing here imports Opacus until it is used (``pip install 'lightning-fed[privacy]'``).

Example:
    >>> from lightning_fed.aggregation import FedAvg
    >>> make_private(FedAvg(), DPConfig(level="client", noise_multiplier=1.0, clip_norm=0.1))
    DPAggregator(FedAvg(), noise_multiplier=1.0, clip_norm=0.1, noise='server', weighting='uniform',
                 adaptive_clipping=False, accountant='rdp')
"""

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.privacy.dp.accountant import (
    OpacusNotInstalledError,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    require_opacus,
)
from lightning_fed.privacy.dp.callback import PrivacyMonitor, find_dp
from lightning_fed.privacy.dp.client_level import DPAggregator
from lightning_fed.privacy.dp.config import DPConfig
from lightning_fed.privacy.dp.grad_sample import attach_grad_sample_hooks
from lightning_fed.privacy.dp.poisson import PoissonBatches, poisson_batch_positions
from lightning_fed.privacy.dp.sample_level import DPSGDAggregator


def make_private(aggregator: Aggregator, config: DPConfig) -> DPAggregator | DPSGDAggregator:
    """Wrap ``aggregator`` for ``config.level``: :class:`DPAggregator` (client) or :class:`DPSGDAggregator` (sample)."""
    if config.level == "client":
        return DPAggregator(aggregator, config)
    return DPSGDAggregator(aggregator, config)


__all__ = [
    "DPAggregator",
    "DPConfig",
    "DPSGDAggregator",
    "OpacusNotInstalledError",
    "PoissonBatches",
    "PrivacyAccountant",
    "PrivacyMonitor",
    "attach_grad_sample_hooks",
    "calibrate_noise_multiplier",
    "find_dp",
    "make_private",
    "poisson_batch_positions",
    "require_opacus",
]
