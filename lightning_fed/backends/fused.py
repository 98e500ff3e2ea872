"""FedAvg rounds with fused local loops: a worker's local batches run in a tight loop, 32 to a Lightning step.

With many small clients the cost of a round is Lightning's per-batch machinery (the loop's hooks, progress, logging
bookkeeping, the batch's trip through the data fetcher), not the model: on McMahan's 2NN with batches of 10, a plain
``Trainer`` costs 2.6x a plain PyTorch loop (docs/benchmarks.md). A worker's local work rarely needs that machinery
per batch, so this backend runs up to :data:`FUSED_BATCHES` of a worker's batches in one Lightning step::

    for worker in plan.workers:
        rounds.start_worker(worker)                   # from the global model, with its own optimizer state
        for chunk in its local batches, 32 at a time: # one Lightning step each (the progress bar still moves)
            for batch in chunk:                       # a tight loop, inside the worker's session:
                training_step(real)                   #   your training_step (self.log weighs by this batch)
                zero_grad(); backward()               #   on_before_backward / on_after_backward hooks
                optimizer step                        #   on_before_optimizer_step, gradient clipping, AMP scaling
        rounds.deliver(worker)
    rounds.finalize()

The numbers equal the per-batch path's (same batches, same order, same optimizer calls: tested), and so do the
epoch values ``self.log`` gives: a Lightning step hands each logged name to Lightning once, merged
(:mod:`~lightning_fed.backends.batched_logs`). What changes is what a Lightning step is: up to 32 local batches of one
worker, so ``trainer.global_step`` counts those, an ``on_step`` metric shows their merged value (for the default
``reduce_fx="mean"``, their mean weighed as the epoch mean weighs them), and
``on_train_batch_start``/``on_train_batch_end`` run once per 32 batches. So ``FederatedStrategy(local_loop="auto")``
(the default) fuses only when nothing observes single batches (:func:`fusion_blockers`: such hooks in the module or
a callback, ``max_steps``, step-based validation or checkpoints, gradient accumulation, step-interval schedulers,
simulated failures) and logs why it did not; ``"steps"`` keeps one Lightning step per batch;
``"fused"`` fuses or refuses, naming what stands in the way.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(TensorDataset(torch.randn(16, 4), torch.arange(16) % 2), workers=2,
    ...                                          batch_size=4)
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(local_loop="fused"), max_epochs=2, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> type(trainer.strategy.backend).__name__, trainer.global_step, trainer.strategy.round_index
    ('FusedBackend', 4, 2)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar, Timer
from lightning.pytorch.plugins.precision import Precision
from torch.optim import Optimizer

from lightning_fed._compat.lightning import saves_within_epochs, set_logging_batch
from lightning_fed.backends.base import LocalWork, worker_of
from lightning_fed.backends.batched_logs import batched_logs
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.workers.base import BaseWorker

LOCAL_LOOPS = ("auto", "steps", "fused")
FUSED_BATCHES = 32  # local batches per Lightning step: the progress bar still moves every few seconds

# hooks Lightning's loop calls once per batch, outside the strategy: with fused loops, once per Lightning step
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_zero_grad",
    "optimizer_zero_grad",
    "optimizer_step",
)
# hooks the strategy and precision plugin call in each local step (callbacks have the first three)
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "backward",
              "configure_gradient_clipping")  # fmt: skip
# callbacks whose per-batch hooks stay right when a Lightning step is a worker's round
_STEP_NEUTRAL = (ProgressBar, LearningRateMonitor, ModelSummary, Timer)


@contextmanager
def stepped_already() -> Iterator[None]:
    """Lightning's warning that ``training_step`` returned ``None``, silenced: a fused step returns ``None`` on
    purpose, having run its local batches' optimizer steps itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")
        yield


class LocalBatches(LocalWork):
    """One Lightning step of a fused round: ``count`` of ``worker``'s local batches, from its ``first``, of the
    ``steps`` it trains in round ``round_index``."""

    __slots__ = ("count", "first", "round_index", "steps", "worker")

    def __init__(self, worker: BaseWorker, steps: int, first: int, count: int, round_index: int) -> None:
        self.worker, self.steps, self.first, self.count, self.round_index = worker, steps, first, count, round_index

    def __repr__(self) -> str:
        return f"LocalBatches({self.worker.id!r}, {self.first}..{self.first + self.count} of {self.steps})"


def _overrides(obj: Any, base: type, hook: str) -> bool:
    return getattr(type(obj), hook, None) is not getattr(base, hook, None)


def fusion_blockers(trainer: Any, module: LightningModule, backend: SequentialBackend) -> list[str]:
    """What needs one Lightning step per batch in this run (empty: the local loops can be fused)."""
    found = [f"{type(module).__name__}.{hook}" for hook in BATCH_HOOKS if _overrides(module, LightningModule, hook)]
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, _STEP_NEUTRAL):
            continue
        if isinstance(callback, ModelCheckpoint):
            if saves_within_epochs(callback):
                found.append("ModelCheckpoint(every_n_train_steps/train_time_interval)")
            continue
        found += [f"{type(callback).__name__}.{h}" for h in BATCH_HOOKS[:3] if _overrides(callback, Callback, h)]
    if trainer is not None:
        if trainer.max_steps not in (-1, None):
            found.append(f"max_steps={trainer.max_steps}")
        if trainer.accumulate_grad_batches != 1:
            found.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches}")
        interval = trainer.val_check_interval
        if isinstance(interval, int) or interval != 1.0 or trainer.check_val_every_n_epoch is None:
            found.append(f"val_check_interval={interval}")
    if backend.step_schedulers:
        found.append("a step-interval LR scheduler")
    if backend.rounds.failures.enabled:
        found.append(f"simulated failures ({backend.rounds.failures.describe()})")
    if backend.resume_state is not None:
        found.append("a checkpoint saved in the middle of a round")
    return found


def step_hooks_overridden(trainer: Any, module: LightningModule) -> list[str]:
    """The per-local-step hooks (:data:`STEP_HOOKS`) that ``module`` or a callback overrides, as ``Class.hook``."""
    found = [f"{type(module).__name__}.{hook}" for hook in STEP_HOOKS if _overrides(module, LightningModule, hook)]
    for callback in getattr(trainer, "callbacks", []):
        found += [f"{type(callback).__name__}.{h}" for h in STEP_HOOKS[:3] if _overrides(callback, Callback, h)]
    return found


class FusedBackend(SequentialBackend):
    """FedAvg rounds, worker after worker, each worker's local batches in one Lightning step (see the module
    docstring)."""

    name = "sequential, fused local loops"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._source: Iterator[Any] | None = None  # the active worker's local batches, across its Lightning steps
        self._failed: Any = None  # the worker whose training_step raised this round (tolerate_failures)
        self._direct_ok: bool | None = None

    def round_length(self, plan: RoundPlan) -> int:
        return sum(-(-steps // FUSED_BATCHES) for steps in plan.steps)

    def round_batches(self, plan: RoundPlan) -> Iterator[Any]:
        for worker, steps in zip(plan.workers, plan.steps):
            for first in range(0, steps, FUSED_BATCHES):
                yield LocalBatches(worker, steps, first, min(FUSED_BATCHES, steps - first), plan.round_index)

    def batch_start(self, batch: Any) -> Any:
        rounds = self.rounds
        if not isinstance(batch, LocalBatches):
            worker_of(batch)  # a clear error: the train loader must be the federated one
        self.open_step(batch)
        assert self.planner is not None and self.loader is not None
        if batch.first == 0:  # the worker's first Lightning step this round: it starts from the global model
            rounds.start_worker(batch.worker, self.calls.optimizers(), self.step_schedulers)
            positions = self.planner.position_source  # gathered at the worker, in its session: no pointer per batch
            self._source = iter(self.planner.worker_batches(batch.worker, batch.steps, batch.round_index, positions))
            self._failed = None
        self.skip = batch.worker.id == self._failed
        self.calls.progress("Round", batch.worker)
        return batch

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        work: LocalBatches = self.batch
        if self.skip or self._source is None or self.loader is None:
            return self.calls.skipped_output()
        (optimizer,) = self.calls.optimizers()  # automatic optimization: one optimizer
        step = self._direct_step if self._direct() else self._lightning_step
        trainer = self.calls.trainer()
        with self.at_shard(work.worker) as shard, batched_logs(self.calls.module()) as logs:  # one session a chunk
            chunk = self.gather_batches(shard, [next(self._source) for _ in range(work.count)])
            for batch_idx, real in enumerate(chunk, start=work.first):
                self.rounds.failures.skip_batch(work.worker.id)  # counts the worker's batches
                if self.budget_spent(work.worker.id):
                    continue  # as the per-batch path, which skips the step
                self.rounds.stats.step(work.worker.id)
                set_logging_batch(trainer, real)  # for the self.log calls that go to Lightning at once
                logs.batch = real
                self.stepping = True
                try:
                    step(self._closure(real, batch_idx, optimizer), optimizer)
                except Exception as err:
                    if not self.tolerate_failures:
                        raise
                    self.rounds.failures.record_failure(work.worker.id, err)  # it sits the rest of the round out
                    self.rounds.reset_module()
                    self.calls.module().zero_grad(set_to_none=True)
                    self._failed = work.worker.id
                    return self.calls.skipped_output()
                finally:
                    self.stepping = False
                self.rounds.local_steps += 1
        return self.calls.skipped_output()  # nothing left for Lightning to back-propagate: the worker has trained

    def _direct(self) -> bool:
        """Whether a local step may skip Lightning's per-step hook calls: nothing overrides them, 32-bit precision,
        no gradient clipping (the result is the same; the calls cost as much as a small model's step)."""
        if self._direct_ok is None:
            trainer = self.calls.trainer()
            self._direct_ok = (
                type(self.calls.precision()) is Precision
                and not step_hooks_overridden(trainer, self.calls.module())
                and not trainer.gradient_clip_val
            )
        return self._direct_ok

    def _direct_step(self, closure: Callable[[], Any], optimizer: Optimizer) -> None:
        """One local step as Lightning's automatic optimization does it, without its (empty) hooks."""
        if closure() is not None:
            optimizer.step()

    def _lightning_step(self, closure: Callable[[], Any], optimizer: Optimizer) -> None:
        """One local step through the strategy and precision plugin: every per-step hook, clipping, AMP scaling."""
        self.calls.optimizer_step(optimizer, closure, self.calls.module())

    def _closure(self, real: Any, batch_idx: int, optimizer: Optimizer) -> Callable[[], Any]:
        """Lightning's automatic-optimization closure for one local batch: training_step, zero_grad, backward
        (through the strategy where :meth:`_direct` says hooks may run, else ``loss.backward()`` and the
        aggregator's gradient corrections)."""

        def closure() -> Any:
            output = self.calls.training_step(real, batch_idx)
            loss = output.get("loss") if isinstance(output, Mapping) else output
            optimizer.zero_grad()
            if loss is None:  # the user's training_step skipped this batch, as Lightning allows
                return None
            if self._direct():
                loss.backward()
                self.post_backward()
            else:
                self.calls.backward(loss, optimizer)
            self.record(self.rounds.active, output, real)
            return loss.detach()

        return closure

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        try:
            with stepped_already():
                out = closure()
        finally:
            self.batch = None
        self.end_step()
        return out

    def describe(self) -> str:
        return super().describe() + f"; up to {FUSED_BATCHES} of a worker's local batches per Lightning step (fused)"
