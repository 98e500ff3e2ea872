"""What ``vectorize=True`` can train exactly, checked before the first round.

Example:
    >>> from lightning_fed.testing import BoringClassifier
    >>> check_vectorizable(BoringClassifier(hidden=4, batch_norm=True), trainer=None, aggregator=None)
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: `vectorize=True` cannot keep per-worker running statistics of ...
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.wrapper import gradient_editors
from lightning_fed.exceptions import FederatedConfigError

_HOOKS_NOT_CALLED = (
    "backward",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "optimizer_step",
    "configure_gradient_clipping",
)


# -- what vectorized training supports -------------------------------------------------------------------------------
def check_vectorizable(module: Any, trainer: Any, aggregator: Aggregator) -> None:
    """Raise :class:`FederatedConfigError` naming what ``vectorize=True`` cannot train exactly."""
    fix = "pass vectorize=False (the sequential path supports it)"
    if not module.automatic_optimization:
        raise FederatedConfigError(f"`vectorize=True` needs automatic optimization (your module uses manual): {fix}.")
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and getattr(sub, "track_running_stats", False):
            raise FederatedConfigError(
                f"`vectorize=True` cannot keep per-worker running statistics of {type(sub).__name__} module "
                f"{name or '<root>'!r}: {fix}, or use a norm without running statistics (GroupNorm, LayerNorm, "
                "track_running_stats=False)."
            )
    overridden = [hook for hook in _HOOKS_NOT_CALLED if is_overridden(hook, module)]
    if overridden:
        raise FederatedConfigError(
            f"`vectorize=True` computes gradients and steps the optimizer itself, so your module's {overridden} "
            f"would not be called: {fix}."
        )
    if len(trainer.optimizers) != 1:
        raise FederatedConfigError(
            f"`vectorize=True` needs exactly one optimizer, got {len(trainer.optimizers)}: {fix}."
        )
    if trainer.accumulate_grad_batches != 1:
        raise FederatedConfigError(
            f"`vectorize=True` does not support `accumulate_grad_batches={trainer.accumulate_grad_batches}`: use 1 "
            f"and a larger batch size, or {fix}."
        )
    precision = str(trainer.precision)
    if precision not in ("32-true", "32", "64-true", "64"):
        raise FederatedConfigError(
            f"`vectorize=True` supports 32/64-bit precision, got precision={precision!r}: {fix}."
        )
    step_schedulers = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs if c.interval == "step"]
    if step_schedulers:
        raise FederatedConfigError(
            f"`vectorize=True` keeps no per-worker LR schedule: step-interval schedulers {step_schedulers} are not "
            f"supported; use interval='epoch' (one step a round) or {fix}."
        )
    editors = gradient_editors(aggregator)
    if editors:
        raise FederatedConfigError(
            f"`vectorize=True` does not support {type(editors[0]).__name__}, which edits gradients at the workers: "
            f"use FedAvg, FedAvgM, FedOpt, robust aggregators, secure aggregation or client-level DP, or {fix}."
        )
