"""``FederatedStrategy(vectorize="auto")``: vectorized or sequential workers, whichever a short measurement finds
faster.

When the train loader first reaches the strategy (before the first round), one real batch of the round's first
worker is read in that worker's session and the model's local step is timed both ways, on copies
(:func:`time_both`):

* **sequential**: ``training_step``, backward and the optimizer step of one worker (the arithmetic of the
  sequential path, whose fused local loops add little to it);
* **vectorized**: one step of all ``K`` workers of the round together
  (:class:`~lightning_fed.backends.vectorized.workers.VectorizedWorkers`, the code the vectorized path runs),
  divided by ``K``.

After a sequential warm-up step, two sequential steps and one vectorized step are timed, twice, interleaved so
that a slow spell of a busy machine hits both; the fastest of each counts, and the vectorized path must be at least
:data:`MARGIN` (10%) faster to be chosen. That costs about 2K + 5 worker steps,
once per fit. The module's parameters, buffers and gradients, the optimizer and its state, the random number
generators and Lightning's logged values are left as they were. The faster path trains the run; the decision and
both timings are logged and kept as ``strategy.vectorize_choice``.
Where the vectorized path cannot run (follow mode, several processes, remote sites, ``tolerate_failures``, what
:func:`check_vectorizable` refuses, a ``training_step`` that cannot run under ``vmap`` or updates a metric),
"auto" means sequential.

Example:
    >>> choice = decide(sequential_s=0.020, vectorized_s=0.012, workers=10)
    >>> choice.vectorize, round(choice.speedup, 2)
    (True, 1.67)
    >>> decide(sequential_s=0.020, vectorized_s=0.019, workers=10).vectorize  # under MARGIN (1.1) ahead: sequential
    False
    >>> print(choice)  # doctest: +ELLIPSIS
    vectorize='auto' chose the vectorized path: a worker's local step took 20.00 ms sequentially and 12.00 ms ...
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import torch
from torch.func import functional_call
from torch.optim import Optimizer

from lightning_fed.backends.base import Backend
from lightning_fed.backends.fused import FusedBackend
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.backends.vectorized.backend import VectorizedBackend
from lightning_fed.backends.vectorized.checks import check_vectorizable
from lightning_fed.backends.vectorized.cohorts import Cohort
from lightning_fed.backends.vectorized.functional import (
    LogRecorder,
    MetricUnderVmap,
    TrainingStepCall,
    guarded_metrics,
    is_vmap_error,
    loss_of,
    patched_log,
)
from lightning_fed.backends.vectorized.workers import VectorizedWorkers, recreate_optimizer
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import info
from lightning_fed.rounds.stats import capture_rng, restore_rng
from lightning_fed.rounds.worker_state import optimizer_params

clock = time.perf_counter  # what the measurement reads (a test may replace it)
REPEATS = 2  # timed rounds of (two sequential steps, one vectorized step), after the warm-ups
# The vectorized path must measure this much faster to be chosen. The measurement times one step of each path on one
# batch; a real vectorized round adds its stacking and bookkeeping to every step (about 1.8 ms a step of 10 workers
# on the 2-core machine), which the measurement leaves out, so a near tie goes to the sequential path (measured:
# docs/benchmarks.md, "vectorize='auto'").
MARGIN = 1.1


@dataclass(frozen=True)
class VectorizeChoice:
    """What ``vectorize="auto"`` chose and why: ``sequential_s`` / ``vectorized_s`` are seconds per worker step
    (``None`` where nothing was measured), ``measure_s`` what the measurement took."""

    vectorize: bool
    reason: str
    sequential_s: float | None = None
    vectorized_s: float | None = None
    workers: int = 0
    measure_s: float = 0.0

    @property
    def speedup(self) -> float | None:
        """Sequential time over vectorized time (above 1: vectorized is faster)."""
        if not self.sequential_s or not self.vectorized_s:
            return None
        return self.sequential_s / self.vectorized_s

    def __str__(self) -> str:
        path = "vectorized" if self.vectorize else "sequential"
        return f"vectorize='auto' chose the {path} path: {self.reason}"


def decide(sequential_s: float, vectorized_s: float, workers: int, margin: float = MARGIN) -> VectorizeChoice:
    """The faster path from two timings (seconds per worker step): vectorized only where it measured more than
    ``margin`` times faster; a tie, or a smaller lead, keeps the sequential path."""
    reason = (
        f"a worker's local step took {1e3 * sequential_s:.2f} ms sequentially and {1e3 * vectorized_s:.2f} ms "
        f"vectorized ({workers} workers at once)"
    )
    return VectorizeChoice(vectorized_s * margin < sequential_s, reason, sequential_s, vectorized_s, workers)


# -- the two timings ---------------------------------------------------------------------------------------------------
def _clip(grads: list[torch.Tensor], clip_val: float | None, algorithm: str | None) -> None:
    if not clip_val:
        return
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(grads, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(grads, clip_val)


class VectorizedStepError(RuntimeError):
    """The vectorized step cannot run this module (a vmap error, or what ``vectorize=True`` refuses)."""


def sequential_step(
    module: Any, optimizer: Optimizer, batch: Any, clip_val: float | None = None, clip_algorithm: str | None = None
) -> Callable[[int], None]:
    """One worker's local step as a function of ``batch_idx``: ``training_step``, backward, clipping and a step of a
    fresh copy of ``optimizer``, on copies of the module's parameters and buffers (kept from call to call)."""
    call = TrainingStepCall(module)
    tensors = {f"module.{n}": t.detach().clone() for n, t in chain(module.named_parameters(), module.named_buffers())}
    names = {id(p): f"module.{n}" for n, p in module.named_parameters()}
    trained = [tensors[names[id(p)]].requires_grad_(True) for p in optimizer_params(optimizer)]
    local = recreate_optimizer(optimizer, trained)

    def step(batch_idx: int) -> None:
        with patched_log(module, LogRecorder()), guarded_metrics(module):  # a metric update raises before it changes
            loss = loss_of(functional_call(call, tensors, (batch, batch_idx)))
            local.zero_grad()
            loss.backward()
            _clip([t.grad for t in trained if t.grad is not None], clip_val, clip_algorithm)
            local.step()

    return step


def vectorized_step(
    module: Any, optimizer: Optimizer, batch: Any, workers: Sequence[Any],
    clip_val: float | None = None, clip_algorithm: str | None = None,
) -> Callable[[int], None]:  # fmt: skip
    """One vectorized step of all ``workers`` (``batch`` for each) as a function of ``batch_idx``."""
    vector = VectorizedWorkers(module, optimizer, {}, clip_val, clip_algorithm)  # {}: every worker starts fresh
    vector.dry_run = True
    k = len(workers)
    vector.start(Cohort(0, tuple(workers), (4,) * k))

    def step(batch_idx: int) -> None:
        vector.compute([batch] * k, [True] * k, batch_idx)
        vector.step()

    return step


@contextlib.contextmanager
def _vectorized_errors() -> Iterator[None]:
    """Within the block, a vmap error or what ``vectorize=True`` refuses leaves as :class:`VectorizedStepError`."""
    try:
        yield
    except Exception as err:
        if is_vmap_error(err) or isinstance(err, FederatedConfigError):
            raise VectorizedStepError(str(err)) from err
        raise


def time_both(
    module: Any, optimizer: Optimizer, batch: Any, workers: Sequence[Any],
    clip_val: float | None = None, clip_algorithm: str | None = None, repeats: int = REPEATS,
) -> tuple[float, float]:  # fmt: skip
    """Seconds of one worker's local step, sequential and vectorized: after a sequential warm-up step, ``repeats``
    times two sequential steps and one vectorized step of all workers, interleaved so that a slow spell of the
    machine hits both; the fastest of each (the vectorized one divided by the number of workers; its first step, the
    one that lays the stacks out, rarely counts). Raises :class:`VectorizedStepError` where the vectorized step
    cannot run."""
    sequential = sequential_step(module, optimizer, batch, clip_val, clip_algorithm)
    sequential(0)
    with _vectorized_errors():
        vectorized = vectorized_step(module, optimizer, batch, workers, clip_val, clip_algorithm)
    seq, vec = float("inf"), float("inf")
    for r in range(repeats):
        for i in (1, 2):
            start = clock()
            sequential(2 * r + i)
            seq = min(seq, clock() - start)
        start = clock()
        with _vectorized_errors():
            vectorized(r)
        vec = min(vec, (clock() - start) / len(workers))
    return seq, vec


def measure(
    module: Any, optimizer: Optimizer, batch: Any, workers: Sequence[Any],
    clip_val: float | None = None, clip_algorithm: str | None = None,
) -> VectorizeChoice:  # fmt: skip
    """Time both paths on ``batch`` (:func:`time_both`) and choose; the module's buffers and the RNGs are restored
    (its parameters, gradients and ``optimizer`` are never touched: the timings run on copies)."""
    rng = capture_rng()
    buffers = [b.detach().clone() for b in module.buffers()]
    start = clock()
    try:
        sequential, vectorized = time_both(module, optimizer, batch, workers, clip_val, clip_algorithm)
    except MetricUnderVmap as err:  # the vectorized path would run each worker's forward apart (loop mode)
        return VectorizeChoice(False, f"training_step updates a metric ({err})", workers=len(workers))
    except VectorizedStepError as err:
        return VectorizeChoice(False, f"the vectorized step cannot run ({err})", workers=len(workers))
    finally:
        restore_rng(rng)
        with torch.no_grad():
            for b, saved in zip(module.buffers(), buffers):
                b.copy_(saved)
    return replace(decide(sequential, vectorized, len(workers)), measure_s=clock() - start)


# -- the thin call site: the strategy's backend, before the first round ------------------------------------------------
def sequential_only(backend: Backend, loader: Any) -> str | None:
    """Why this run trains sequentially whatever a measurement says (``None``: the vectorized path may run)."""
    if type(backend) not in (SequentialBackend, FusedBackend):
        return f"the {backend.name} backend runs this fit (mode='follow', several processes, or remote sites)"
    assert isinstance(backend, SequentialBackend)
    if getattr(loader, "remote", False):
        return "remote sites train the rounds"
    if backend.tolerate_failures:
        return "tolerate_failures=True (a vectorized step cannot tell which worker's training_step raised)"
    if backend.resume_state is not None:
        return "a checkpoint saved in the middle of a round is being resumed"
    try:
        check_vectorizable(backend.calls.module(), backend.calls.trainer(), backend.rounds.aggregator)
    except FederatedConfigError as err:
        return f"the vectorized path cannot train this run exactly ({err})"
    return None


_CHOSEN: weakref.WeakKeyDictionary[Backend, VectorizeChoice] = weakref.WeakKeyDictionary()


def chosen(backend: Backend | None) -> VectorizeChoice | None:
    """What :func:`choose_backend` chose for the fit ``backend`` belongs to (``None``: not chosen yet; a new fit
    sets up a new backend, so it measures again)."""
    return _CHOSEN.get(backend) if backend is not None else None


def choose_backend(backend: Backend, loader: Any) -> tuple[Backend, VectorizeChoice | None]:
    """For ``vectorize="auto"``: ``backend`` (the sequential one the strategy set up) or, where the measurement finds
    it faster, a vectorized backend over the same rounds and planning, set up; and the choice (``None`` outside
    ``fit``'s training: nothing chosen yet)."""
    trainer = backend.calls.trainer()
    if trainer is None or not trainer.training:
        return backend, None
    chosen_backend, choice = _choose(backend, loader, trainer)
    _CHOSEN[backend] = _CHOSEN[chosen_backend] = choice
    return chosen_backend, choice


def _choose(backend: Backend, loader: Any, trainer: Any) -> tuple[Backend, VectorizeChoice]:
    reason = sequential_only(backend, loader)
    if reason is None:
        assert isinstance(backend, SequentialBackend)
        plan = backend.make_planner(loader).plan(backend.rounds.index)
        if len(plan.workers) < 2:
            reason = f"{len(plan.workers)} worker a round: nothing to train together"
    if reason is not None:
        choice = VectorizeChoice(False, reason)
        info(f"FederatedStrategy: {choice}.")
        return backend, choice
    assert isinstance(backend, SequentialBackend)
    worker = plan.workers[0]
    positions = next(iter(loader.batch_positions(worker, 0)))
    with backend.at_shard(worker, loader) as shard:  # the worker's own batch, at the worker
        (batch,) = backend.gather_batches(shard, [positions], loader)
        choice = measure(backend.calls.module(), backend.calls.optimizers()[0], batch, plan.workers,
                         trainer.gradient_clip_val, trainer.gradient_clip_algorithm)  # fmt: skip
    info(f"FederatedStrategy: {choice} (measured in {choice.measure_s:.2f} s).")
    if not choice.vectorize:
        return backend, choice
    vectorized = backend.rebuilt_as(VectorizedBackend)
    vectorized.fused = isinstance(backend, FusedBackend)  # the run allows chunks of steps (glue.choose_local_loop)
    vectorized.setup(trainer)
    return vectorized, choice
