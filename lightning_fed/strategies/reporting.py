"""What FederatedStrategy reports and keeps for a resume: per-worker tables, progress bar text, RNG state.

Example:
    >>> print(worker_table({"westside": {"samples": 10, "steps": 2, "last_loss": 0.5, "failed": 0, "dropped": 0,
    ...                                  "late": 0}}))
            worker  samples   steps  last loss  failed  dropped  late
          westside       10       2     0.5000       0        0     0
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lightning_fed.workers.base import BaseWorker


class WorkerLosses:
    """Each worker's sample-weighted mean training loss, accumulated on its device, logged once a round.

    Logging through ``LightningModule.log`` at every step costs more than a small model's whole step; this keeps a
    running sum per worker and hands ``train_loss/<worker>`` to the loggers (and ``callback_metrics``) at the end
    of each round (each epoch in ``mode="follow"``).
    """

    def __init__(self) -> None:
        self._sums: dict[Hashable, list[Any]] = {}

    def add(self, worker_id: Hashable, loss: Tensor, batch_size: int | None) -> None:
        weight = batch_size or 1
        entry = self._sums.get(worker_id)
        if entry is None:
            self._sums[worker_id] = [loss.float() * weight, weight]
        else:
            entry[0] = entry[0] + loss.float() * weight
            entry[1] += weight

    def flush(self, trainer: pl.Trainer) -> dict[str, float]:
        """Log the means since the last flush; returns them."""
        if not self._sums:
            return {}
        means = {f"train_loss/{w}": float(total / count) for w, (total, count) in self._sums.items()}
        self._sums.clear()
        for logger in trainer.loggers:
            logger.log_metrics(means, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in means.items()})
        return means


def worker_summary(stats: dict[Hashable, dict[str, Any]], failures: Any) -> dict[Hashable, dict[str, Any]]:
    """Per worker: samples, steps trained, last loss, and the failure counters of ``failures``."""
    out = {}
    for worker_id, entry in stats.items():
        last = entry.get("last_loss")
        out[worker_id] = {
            "samples": entry["samples"],
            "steps": entry["steps"],
            "last_loss": float(last) if last is not None else None,
            **failures.counts(worker_id),
        }
    return out


def worker_table(summary: dict[Hashable, dict[str, Any]]) -> str:
    """A per-worker summary as a text table."""
    rows = [f"{'worker':>14} {'samples':>8} {'steps':>7} {'last loss':>10} {'failed':>7} {'dropped':>8} {'late':>5}"]
    for worker_id, s in summary.items():
        loss = f"{s['last_loss']:.4f}" if s["last_loss"] is not None else "-"
        rows.append(
            f"{worker_id!s:>14} {s['samples']:>8} {s['steps']:>7} {loss:>10} {s['failed']:>7} {s['dropped']:>8} "
            f"{s['late']:>5}"
        )
    return "\n".join(rows)


def capture_rng() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random states, for a checkpoint."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def batch_size_of(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else None
    if isinstance(batch, (list, tuple)):
        for item in batch:
            found = batch_size_of(item)
            if found is not None:
                return found
    if isinstance(batch, dict):
        for item in batch.values():
            found = batch_size_of(item)
            if found is not None:
                return found
    return None


def describe_progress(trainer: pl.Trainer, unit: str, worker: BaseWorker) -> None:
    try:
        bar = trainer.progress_bar_callback.train_progress_bar  # type: ignore[union-attr]
    except (AttributeError, TypeError):  # no progress bar, or not a tqdm one, or not started
        return
    set_description = getattr(bar, "set_description", None)
    if callable(set_description):
        set_description(f"{unit} {trainer.current_epoch} · {worker.id}", refresh=False)
