"""The parts FederatedStrategy is assembled from: the aggregator chain, the tensors it averages, the schedulers
it keeps per worker.

Example:
    >>> build_aggregator("fedavg", secure_aggregation=True, privacy=None, mode="fedavg")
    SecureAggregator(FedAvg(), ...)
"""

from __future__ import annotations

import lightning.pytorch as pl

from lightning_fed.aggregation import AGGREGATORS, Aggregator
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig, make_private
from lightning_fed.rounds.worker_state import StepSchedulers
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregator


def build_aggregator(
    aggregation: str | Aggregator,
    secure_aggregation: bool | SecureAggregationConfig,
    privacy: DPConfig | None,
    mode: str,
) -> Aggregator:
    """The aggregator chain: ``aggregation``, wrapped by secure aggregation, wrapped by differential privacy."""
    aggregator = resolve_aggregator(aggregation)
    if secure_aggregation:
        if mode == "follow":
            raise FederatedConfigError(
                "`secure_aggregation` secures the sum of a round's updates: it needs mode='fedavg', got mode='follow'."
            )
        config = secure_aggregation if isinstance(secure_aggregation, SecureAggregationConfig) else None
        aggregator = SecureAggregator(aggregator, config)  # refuses non-sum aggregators, naming both settings
    if privacy is not None:
        if not isinstance(privacy, DPConfig):
            raise FederatedConfigError(
                f"`privacy={privacy!r}` is not valid: pass a lightning_fed.privacy.dp.DPConfig(...) or None."
            )
        if mode == "follow":
            raise FederatedConfigError("`privacy` (differential privacy) needs mode='fedavg', got mode='follow'.")
        aggregator = make_private(aggregator, privacy)  # outermost: DP wraps secure aggregation
    return aggregator


def resolve_aggregator(aggregation: str | Aggregator) -> Aggregator:
    if isinstance(aggregation, Aggregator):
        return aggregation
    if isinstance(aggregation, str) and aggregation.lower() in AGGREGATORS:
        return AGGREGATORS[aggregation.lower()]()
    raise FederatedConfigError(
        f"`aggregation={aggregation!r}` is not valid: pass one of {sorted(AGGREGATORS)} or an Aggregator instance."
    )


def per_worker_schedulers(trainer: pl.Trainer) -> StepSchedulers:
    """The step-interval LR schedulers (kept per worker, each stepping every ``frequency`` of its worker's own
    batches); refuses mixing them with epoch-interval ones."""
    configs = trainer.lr_scheduler_configs
    step = [c.scheduler for c in configs if c.interval == "step"]
    epoch = [c.scheduler for c in configs if c.interval != "step"]
    if step and epoch:
        raise FederatedConfigError(
            "FederatedStrategy keeps step-interval LR schedulers per worker and epoch-interval ones global (once a "
            f"round); got both ({[type(s).__name__ for s in step]} per step, {[type(s).__name__ for s in epoch]} "
            "per epoch), which would fight over the learning rate: use one kind."
        )
    return StepSchedulers([c for c in configs if c.interval == "step"])
