"""What a federation reports and keeps for a resume: per-worker statistics and tables, losses, RNG state.

Example:
    >>> print(worker_table({"westside": {"samples": 10, "steps": 2, "last_loss": 0.5, "failed": 0, "dropped": 0,
    ...                                  "late": 0}}))
            worker  samples   steps  last loss  failed  dropped  late
          westside       10       2     0.5000       0        0     0
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_fed.logs import clipped


class WorkerLosses:
    """Each worker's sample-weighted mean training loss, accumulated on its device, logged once a round.

    Logging through ``LightningModule.log`` at every step costs more than a small model's whole step; this keeps a
    running sum per worker and hands ``train_loss/<worker>`` to the loggers (and ``callback_metrics``) at the end
    of each round (each epoch in ``mode="follow"``).
    """

    def __init__(self) -> None:
        self._sums: dict[Hashable, list[Any]] = {}
        self._pending: list[tuple[tuple[Hashable, ...], Tensor, list[int]]] = []  # add_many's, not yet folded

    def add(self, worker_id: Hashable, loss: Tensor, batch_size: int | None) -> None:
        self._add(worker_id, loss.float() * (batch_size or 1), batch_size or 1)

    def _add(self, worker_id: Hashable, weighted: Tensor, weight: int) -> None:
        entry = self._sums.get(worker_id)
        if entry is None:
            self._sums[worker_id] = [weighted, weight]
        else:
            entry[0] = entry[0] + weighted
            entry[1] += weight

    def add_many(self, worker_ids: Sequence[Hashable], losses: Tensor, batch_sizes: Sequence[int | None]) -> None:
        """:meth:`add` for several workers at once (``losses[i]`` is ``worker_ids[i]``'s): one multiplication a call,
        folded into the per-worker sums when they are read (a vectorized step records K workers' losses).

        Example:
            >>> losses = WorkerLosses()
            >>> losses.add_many(["a", "b"], torch.tensor([1.0, 4.0]), [2, 2])
            >>> losses.add_many(["a", "b"], torch.tensor([3.0, 0.0]), [2, None])
            >>> losses.means_by_worker()  # a: (1*2 + 3*2) / 4, b: (4*2 + 0*1) / 3
            {'a': 2.0, 'b': 2.6666667461395264}
        """
        weights = [b or 1 for b in batch_sizes]
        weighted = losses.detach().float() * torch.tensor(weights, dtype=torch.float32, device=losses.device)
        self._pending.append((tuple(worker_ids), weighted, weights))

    def _fold(self) -> None:
        """Fold :meth:`add_many`'s records into the per-worker sums: one sum per set of workers."""
        groups: dict[tuple[Hashable, ...], list[tuple[Tensor, list[int]]]] = {}
        for ids, weighted, weights in self._pending:
            groups.setdefault(ids, []).append((weighted, weights))
        self._pending.clear()
        for ids, records in groups.items():
            totals = torch.stack([weighted for weighted, _ in records]).sum(0)
            for i, worker_id in enumerate(ids):
                self._add(worker_id, totals[i], sum(weights[i] for _, weights in records))

    def means(self) -> dict[str, float]:
        """``{"train_loss/<worker>": mean}`` since the last call; starts afresh."""
        return {f"train_loss/{w}": value for w, value in self.means_by_worker().items()}

    def means_by_worker(self) -> dict[Hashable, float]:
        """``{worker_id: mean}`` since the last call; starts afresh."""
        self._fold()
        means = {w: float(total / count) for w, (total, count) in self._sums.items()}
        self._sums.clear()
        return means

    def report(self) -> dict[Hashable, tuple[float, int]]:
        """This process's sums, for :meth:`merge` in every process."""
        self._fold()
        return {w: (float(total), count) for w, (total, count) in self._sums.items()}

    def merge(self, reports: Sequence[dict[Hashable, tuple[float, int]]]) -> None:
        """Take the other processes' sums for workers this process has none of."""
        self._fold()
        for report in reports:
            for w, (total, count) in report.items():
                if w not in self._sums:
                    self._sums[w] = [torch.tensor(total), count]


class WorkerStats:
    """Per worker: its samples, the batches it trained, its last loss.

    Example:
        >>> stats = WorkerStats()
        >>> stats.register("a", samples=10); stats.step("a"); stats.loss("a", torch.tensor(0.5))
        >>> stats.rows["a"]["steps"], float(stats.rows["a"]["last_loss"])
        (1, 0.5)
    """

    def __init__(self) -> None:
        self.rows: dict[Hashable, dict[str, Any]] = {}

    def register(self, worker_id: Hashable, samples: int) -> None:
        self.rows.setdefault(worker_id, {"samples": samples, "steps": 0})

    def step(self, worker_id: Hashable) -> None:
        self.rows[worker_id]["steps"] += 1

    def loss(self, worker_id: Hashable, loss: Tensor | float | None) -> None:
        self.rows[worker_id]["last_loss"] = loss

    def samples(self, worker_id: Hashable) -> int:
        return int(self.rows[worker_id]["samples"])

    def report(self, mine: Iterable[Hashable]) -> dict[Hashable, tuple[int, float | None]]:
        mine = set(mine)
        return {
            w: (row["steps"], None if row.get("last_loss") is None else float(row["last_loss"]))
            for w, row in self.rows.items()
            if w in mine
        }

    def merge(self, reports: Sequence[dict[Hashable, tuple[int, float | None]]]) -> None:
        for report in reports:
            for w, (steps, last_loss) in report.items():
                if w in self.rows:
                    self.rows[w]["steps"] = steps
                    self.rows[w]["last_loss"] = last_loss

    def summary(self, failures: Any) -> dict[Hashable, dict[str, Any]]:
        return worker_summary(self.rows, failures)

    def load_summary(self, saved: dict[Hashable, dict[str, Any]]) -> None:
        """Steps (and last losses) from a checkpoint's summary, for the workers this federation has."""
        for worker_id, row in saved.items():
            if worker_id in self.rows:
                self.rows[worker_id]["steps"] = row["steps"]
                if row.get("last_loss") is not None:
                    self.rows[worker_id]["last_loss"] = row["last_loss"]


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


def worker_table(summary: dict[Hashable, dict[str, Any]], max_rows: int | None = 20) -> str:
    """A per-worker summary as a text table: the first ``max_rows`` workers and how many more (``None``: all)."""
    header = f"{'worker':>14} {'samples':>8} {'steps':>7} {'last loss':>10} {'failed':>7} {'dropped':>8} {'late':>5}"
    rows = []
    for worker_id, s in summary.items():
        loss = f"{s['last_loss']:.4f}" if s["last_loss"] is not None else "-"
        rows.append(
            f"{worker_id!s:>14} {s['samples']:>8} {s['steps']:>7} {loss:>10} {s['failed']:>7} {s['dropped']:>8} "
            f"{s['late']:>5}"
        )
    return "\n".join([header, *clipped(rows, max_rows, "workers (strategy.worker_summary(): all)")])


def capture_rng() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random states, as tensors and numbers only: a checkpoint holding
    them loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
    }  # fmt: skip


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng` (also of checkpoints written before the states were tensors)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved_numpy, saved_python = state["numpy"], state["python"]
    if isinstance(saved_numpy, dict):
        keys = saved_numpy["keys"].numpy().astype(np.uint32)
        saved_numpy = (saved_numpy["kind"], keys, saved_numpy["pos"], saved_numpy["has_gauss"],
                       saved_numpy["cached_gaussian"])  # fmt: skip
    np.random.set_state(saved_numpy)
    if isinstance(saved_python, dict):
        saved_python = (saved_python["version"], tuple(int(w) for w in saved_python["state"]), saved_python["gauss"])
    random.setstate(saved_python)


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
