"""``PrivacyMonitor``: logs the privacy budget after every round and stops training when the target is reached.

It finds the DP wrapper (:class:`~lightning_fed.privacy.dp.DPAggregator` or
:class:`~lightning_fed.privacy.dp.DPSGDAggregator`) in ``trainer.strategy.aggregator``, logs its ``metrics()``
(``dp/epsilon``, ...) at each round's end, and sets ``trainer.should_stop`` once one more round would pass
``target_epsilon`` (client level) or every worker's budget is spent (sample level).

Example:
    >>> from lightning_fed.aggregation import FedAvg
    >>> from lightning_fed.privacy.dp import DPAggregator, DPConfig
    >>> dp = DPAggregator(FedAvg(), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    >>> find_dp(dp) is dp, find_dp(FedAvg())
    (True, None)
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.wrapper import aggregator_chain
from lightning_fed.privacy.dp.client_level import DPAggregator
from lightning_fed.privacy.dp.sample_level import DPSGDAggregator


def find_dp(aggregator: Aggregator | None) -> DPAggregator | DPSGDAggregator | None:
    """The first DP wrapper in a chain of wrappers (each holding the next as ``.inner``), or ``None``."""
    return next((a for a in aggregator_chain(aggregator) if isinstance(a, (DPAggregator, DPSGDAggregator))), None)


class PrivacyMonitor(pl.Callback):
    """Logs ``dp/epsilon`` (and more) each round; stops the run before ``target_epsilon`` would be passed.

    Args:
        log: log the metrics through ``pl_module.log_dict`` (else only keep them in ``history``).
    """

    def __init__(self, log: bool = True) -> None:
        self.log = log
        self.history: list[dict[str, float]] = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Never start a round that would pass ``target_epsilon``: with such a budget, training does not begin."""
        dp = find_dp(getattr(trainer.strategy, "aggregator", None))
        if dp is not None and isinstance(dp, DPAggregator) and dp.should_stop:
            rank_zero_info(
                f"PrivacyMonitor: not starting a round: the next one would pass target_epsilon="
                f"{dp.config.target_epsilon} (delta={dp.config.delta}); epsilon spent so far: {dp.epsilon():.4f}. "
                "Raise target_epsilon or noise_multiplier, or sample fewer clients per round."
            )
            trainer.should_stop = True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dp = find_dp(getattr(trainer.strategy, "aggregator", None))
        if dp is None:
            return
        metrics = dp.metrics()
        self.history.append(metrics)
        if self.log:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        if dp.should_stop:
            rank_zero_info(
                f"PrivacyMonitor: stopping, one more round would pass target_epsilon={dp.config.target_epsilon} "
                f"(delta={dp.config.delta}); epsilon so far: {metrics['dp/epsilon']:.4f}."
            )
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
