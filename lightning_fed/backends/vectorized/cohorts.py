"""Cohorts of vectorized workers and the steps the round loader yields for them.

Workers whose optimizer states differ in kind or in their scalar ``step`` cannot share one stacked optimizer, so a
round's workers are split into cohorts of equal state signature, trained one cohort after another.

Example:
    >>> from lightning_fed import VirtualWorker
    >>> a, b = VirtualWorker(id="co-a"), VirtualWorker(id="co-b")
    >>> [c.length for c in plan_cohorts([a, b], [2, 3], states={}, optimizer=None)]
    [3]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_fed.backends.base import LocalWork
from lightning_fed.rounds.worker_state import optimizer_params
from lightning_fed.workers.base import BaseWorker


# -- what the round loader yields ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cohort:
    """Workers that train together: their optimizer states have one signature, so one stacked optimizer fits."""

    index: int
    workers: tuple[BaseWorker, ...]
    steps: tuple[int, ...]

    @property
    def length(self) -> int:
        return max(self.steps)


class VectorStep(LocalWork):
    """One vectorized step: the next pointer batch of each of the cohort's workers (``None``: it has none left).

    ``chunk`` holds every worker's batches of the :data:`CHUNK_STEPS` steps from ``chunk_start`` (this one among
    them), so a worker's batches can be gathered in one visit to its session. A plain object (not a collection), so
    Lightning's batch transfer leaves it alone.
    """

    __slots__ = ("batches", "chunk", "chunk_start", "cohort", "step")

    def __init__(
        self, cohort: Cohort, step: int, batches: list[Any], chunk: list[list[Any]] | None = None, chunk_start: int = 0
    ) -> None:
        self.cohort = cohort
        self.step = step
        self.batches = batches
        self.chunk = chunk if chunk is not None else [[b] if b is not None else [] for b in batches]
        self.chunk_start = step if chunk is None else chunk_start

    def __repr__(self) -> str:
        present = sum(b is not None for b in self.batches)
        return f"VectorStep(cohort={self.cohort.index}, step={self.step}, batches={present}/{len(self.batches)})"


CHUNK_STEPS = 32  # steps whose batches a worker's session gathers at once: 32 batches of each worker in memory


def cohort_steps(cohorts: Sequence[Cohort], planner: Any, round_index: int, source: Any = None) -> Iterator[VectorStep]:
    """The round's vectorized steps: for each cohort, step ``t`` holds every worker's ``t``-th batch (the batches
    ``planner.worker_batches`` gives the sequential path, in the same order; ``source``: as there, e.g. the
    loader's ``batch_positions`` for positions gathered at the worker instead of pointer batches)."""
    for cohort in cohorts:
        streams = [planner.worker_batches(w, n, round_index, source) for w, n in zip(cohort.workers, cohort.steps)]
        for start in range(0, cohort.length, CHUNK_STEPS):
            end = min(start + CHUNK_STEPS, cohort.length)
            chunk = [list(itertools.islice(s, max(0, min(end, n) - start))) for s, n in zip(streams, cohort.steps)]
            for step in range(start, end):
                batches = [mine[step - start] if step - start < len(mine) else None for mine in chunk]
                yield VectorStep(cohort, step, batches, chunk, start)


class VectorChunk(LocalWork):
    """One Lightning step of a fused vectorized round: a chunk of one cohort's consecutive :class:`VectorStep` s."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[VectorStep]) -> None:
        self.steps = steps

    def __repr__(self) -> str:
        first, last = self.steps[0], self.steps[-1]
        return f"VectorChunk(cohort={first.cohort.index}, steps={first.step}..{last.step})"


def chunked(steps: Iterator[VectorStep]) -> Iterator[VectorChunk]:
    """``steps`` (from :func:`cohort_steps`) grouped by their chunk: one :class:`VectorChunk` per chunk."""
    for _, group in itertools.groupby(steps, key=lambda step: (step.cohort.index, step.chunk_start)):
        yield VectorChunk(list(group))


def chunk_count(cohorts: Sequence[Cohort]) -> int:
    """How many :class:`VectorChunk` s :func:`chunked` makes of the cohorts' steps."""
    return sum(-(-cohort.length // CHUNK_STEPS) for cohort in cohorts)


# -- cohorts by optimizer-state signature -----------------------------------------------------------------------------
def _elementwise(value: Any, shape: torch.Size) -> bool:
    """Whether an optimizer-state entry is a tensor shaped like its parameter (``shape``): one value per element,
    stacked along the worker dimension (momentum, Adam's moments), unlike a shared scalar such as ``step``."""
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape == shape


def _signature(state: dict[Tensor, dict[str, Any]] | None, params: Sequence[Tensor]) -> tuple:
    if not state:
        return ()
    out = []
    for position, param in enumerate(params):
        entries = state.get(param)
        if not entries:
            continue
        items = []
        for key in sorted(entries):
            value = entries[key]
            if _elementwise(value, param.shape):
                items.append((key, "tensor"))  # stacked along the worker dimension
            elif isinstance(value, Tensor) and value.numel() == 1:
                items.append((key, float(value)))  # one shared number: must be equal
            else:
                items.append((key, repr(value)))
        out.append((position, tuple(items)))
    return tuple(out)


def plan_cohorts(
    workers: Sequence[BaseWorker], steps: Sequence[int], states: Any, optimizer: Optimizer | None
) -> list[Cohort]:
    """Split a round's workers into cohorts of equal optimizer-state signature, in order of first appearance."""
    params = optimizer_params(optimizer) if optimizer is not None else []
    groups: dict[tuple, list[int]] = {}
    for i, worker in enumerate(workers):
        saved = states.get(worker.id)
        key = _signature(saved[0] if saved else None, params)
        groups.setdefault(key, []).append(i)
    return [
        Cohort(n, tuple(workers[i] for i in idx), tuple(steps[i] for i in idx)) for n, idx in enumerate(groups.values())
    ]
