"""The vectorized backend: a round's workers train together under ``torch.vmap`` (``vectorize=True``).

The round loader yields :class:`~lightning_fed.backends.vectorized.cohorts.VectorStep` s (the next batch of every
worker of a cohort); each is one Lightning step whose ``training_step`` computes every worker's gradients at once
and whose optimizer step moves every worker's slice (see :mod:`~lightning_fed.backends.vectorized.workers`). At the
end of a cohort each worker delivers its update, as in the sequential backend. Where nothing observes single batches
(``local_loop="auto"``, as for :mod:`~lightning_fed.backends.fused`), a Lightning step is a
:class:`~lightning_fed.backends.vectorized.cohorts.VectorChunk`: up to 32 vectorized steps, with the same numbers
(below: 4 workers x 2 batches, 2 vectorized steps in one Lightning step).

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(TensorDataset(torch.randn(32, 4), torch.arange(32) % 2), workers=4,
    ...                                          batch_size=4)
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(vectorize=True), max_epochs=1, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> type(trainer.strategy.backend).__name__, trainer.strategy.backend.fused, trainer.global_step
    ('VectorizedBackend', True, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_fed.backends.batched_logs import batched_logs
from lightning_fed.backends.fused import stepped_already
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.backends.vectorized.checks import check_vectorizable
from lightning_fed.backends.vectorized.cohorts import (
    CHUNK_STEPS,
    Cohort,
    VectorChunk,
    VectorStep,
    chunk_count,
    chunked,
    cohort_steps,
    plan_cohorts,
)
from lightning_fed.backends.vectorized.workers import VectorizedWorkers
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.rounds.releases import releases_scalars
from lightning_fed.rounds.stats import batch_size_of
from lightning_fed.rounds.worker_state import delivery_lr


class VectorizedBackend(SequentialBackend):
    """FedAvg rounds whose workers train together (see the module docstring); pointer batches that are not vectorized
    steps (none in a vectorized run) would train as in the sequential backend."""

    name = "vectorized"
    vector: VectorizedWorkers | None = None
    fused = False  # a chunk of steps per Lightning step (set where the run allows: glue.choose_local_loop)

    def setup(self, trainer: Any) -> None:
        module = self.calls.module()
        check_vectorizable(module, trainer, self.rounds.aggregator)
        self.vector = VectorizedWorkers(
            module, self.calls.optimizers()[0], self.rounds.optimizer_states, trainer.gradient_clip_val,
            trainer.gradient_clip_algorithm,
        )  # fmt: skip
        self._cohorts: tuple[int, list[Cohort]] | None = None
        self.active: list[bool] = []  # which workers of the current vectorized step train
        self._chunk: tuple[list[list[Any]], list[list[Any] | None]] | None = None  # a chunk's batches, as gathered

    # -- the round's steps ----------------------------------------------------------------------------------------
    def cohorts(self, plan: RoundPlan) -> list[Cohort]:
        planned = getattr(self, "_cohorts", None)
        if planned is not None and planned[0] == plan.round_index:
            return planned[1]
        optimizers = self.calls.optimizers()
        cohorts = plan_cohorts(
            plan.workers, plan.steps, self.rounds.optimizer_states, optimizers[0] if optimizers else None
        )
        self._cohorts = (plan.round_index, cohorts)
        return cohorts

    def lengths_vary(self) -> bool:
        """Cohorts split by the workers' optimizer states, which change from round to round."""
        return True

    def round_length(self, plan: RoundPlan) -> int:
        self.calls.restore()  # cohorts depend on the workers' optimizer states: a resume must load them first
        cohorts = self.cohorts(plan)
        return chunk_count(cohorts) if self.fused else sum(c.length for c in cohorts)

    def round_batches(self, plan: RoundPlan) -> Iterator[Any]:
        assert self.planner is not None and self.loader is not None
        # positions, gathered at each worker in its session (no pointer per batch)
        steps = cohort_steps(self.cohorts(plan), self.planner, plan.round_index, self.planner.position_source)
        yield from chunked(steps) if self.fused else steps

    def begin_round(self, plan: RoundPlan) -> None:
        self._cohorts = None  # the cohorts of the round being begun, from the workers' states now
        super().begin_round(plan)

    # -- one vectorized step --------------------------------------------------------------------------------------
    def batch_start(self, batch: Any) -> Any:
        if not isinstance(batch, (VectorStep, VectorChunk)):
            return super().batch_start(batch)
        self.open_step(batch)
        first = batch if isinstance(batch, VectorStep) else batch.steps[0]
        self._begin_step(first)
        self.calls.progress("Round", first.cohort.workers[0])
        return batch

    def _begin_step(self, step: VectorStep) -> None:
        """The step's cohort trains (the previous one delivers first); which of its workers have a batch."""
        rounds, vector = self.rounds, self.vector
        assert vector is not None
        if vector.cohort is not step.cohort:
            if vector.cohort is not None:
                self.finish_cohort()
            vector.start(step.cohort)
            for worker in step.cohort.workers:
                rounds.aggregator.worker_start(worker.id, rounds.global_)
        self.active = [
            b is not None and not rounds.failures.skip_batch(worker.id)
            for worker, b in zip(step.cohort.workers, step.batches)
        ]
        self.skip = not any(self.active)
        for worker, active in zip(step.cohort.workers, self.active):
            if active:
                rounds.stats.step(worker.id)

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        step = args[0] if args else kwargs.get("batch")
        if isinstance(step, VectorChunk):  # fused: every step of the chunk, the optimizer's included
            assert self.vector is not None
            with batched_logs(self.calls.module()):  # each logged name goes to Lightning once a chunk
                for i, one in enumerate(step.steps):
                    if i:
                        self._begin_step(one)
                    if not self.skip:
                        self._vector_step(one, one.step, mean=False)
                        self.vector.step()
            return self.calls.skipped_output()
        if not isinstance(step, VectorStep):
            return super().training_step(args, kwargs)
        if self.skip:
            return self.calls.skipped_output()
        return self._vector_step(step, args[1] if len(args) > 1 else kwargs.get("batch_idx", 0))

    def _vector_step(self, step: VectorStep, batch_idx: int, mean: bool = True) -> Tensor | None:
        """Every active worker's forward and gradients for ``step``; the mean loss for Lightning's progress bar
        (``mean=False``: a fused chunk, whose Lightning step shows none)."""
        assert self.vector is not None
        real = self._real_batches(step)
        positions, values = self.vector.compute(real, self.active, batch_idx)
        if not positions:
            return None
        workers = step.cohort.workers
        sizes = [batch_size_of(real[k]) for k in positions]
        released = [i for i, k in enumerate(positions) if releases_scalars(workers[k])]  # else no per-worker loss
        if released:
            mine = values if len(released) == len(positions) else values[released]
            ids = [workers[positions[i]].id for i in released]
            self.rounds.losses.add_many(ids, mine, [sizes[i] for i in released])
            for worker_id, loss in zip(ids, mine.unbind()):
                self.rounds.stats.loss(worker_id, loss)
        if not mean:
            return None
        weights = [size or 1 for size in sizes]
        return (values.float() * values.new_tensor(weights, dtype=torch.float32)).sum() / sum(weights)

    def _real_batches(self, step: VectorStep) -> list[Any]:
        """Each active worker's batch of ``step``, read in its session (``None`` for the others). Positions are
        gathered from the worker's shard once a chunk of steps, in one visit; pointer batches resolve one by one."""
        assert self.loader is not None
        if self._chunk is None or self._chunk[0] is not step.chunk:
            gathered: list[list[Any] | None] = []
            for worker, batches in zip(step.cohort.workers, step.chunk):
                if batches and type(batches[0]) is torch.Tensor:  # positions (a pointer batch is a tuple of pointers)
                    with self.at_shard(worker) as shard:
                        gathered.append(self.gather_batches(shard, batches))
                else:
                    gathered.append(None)
            self._chunk = (step.chunk, gathered)
        real: list[Any] = []
        for mine, batch, active in zip(self._chunk[1], step.batches, self.active):
            if not active:
                real.append(None)
            elif mine is not None:
                real.append(mine[step.step - step.chunk_start])
            else:
                with batch[0].location.session(batch) as resolved:  # each worker's batch, from its own store
                    real.append(self.to_device([resolved])[0])
        return real

    def backward(self, loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        if isinstance(self.batch, (VectorStep, VectorChunk)):
            return loss
        return super().backward(loss, optimizer, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        batch = self.batch
        if not isinstance(batch, (VectorStep, VectorChunk)):
            return super().optimizer_step(optimizer, closure, model, kwargs)
        assert self.vector is not None
        try:
            with stepped_already():  # a fused chunk returns None to Lightning: it has stepped
                out = closure()  # runs training_step: the vectorized forward and gradients (backward is skipped)
            if isinstance(batch, VectorStep) and not self.skip:
                self.vector.step()
        finally:
            self.batch = None
        step = batch if isinstance(batch, VectorStep) else batch.steps[-1]
        if step.step == step.cohort.length - 1:
            self.finish_cohort()
        self.end_step()
        return out

    def finish_cohort(self) -> None:
        """Every worker of the cohort delivers its update (at the worker, as in the sequential backend)."""
        assert self.vector is not None
        self._chunk = None  # the cohort's batches are spent
        rounds = self.rounds
        buffers = [t.detach() for t in rounds.tensors[rounds.num_params :]]  # not trained here: the global values
        lr = delivery_lr(self.calls.optimizers())
        for worker, params, steps in self.vector.finish():
            rounds.deliver(worker, params + buffers, steps, lr)

    def teardown(self) -> None:
        self._chunk = None  # no worker's gathered batches outlive the fit, even one that stopped mid-cohort
        super().teardown()

    def describe(self) -> str:
        fused = f"; up to {CHUNK_STEPS} vectorized steps per Lightning step (fused)" if self.fused else ""
        return super().describe() + fused

    def finalize_round(self) -> None:
        if self.vector is not None and self.vector.cohort is not None and self.rounds.is_open:
            self.finish_cohort()
        super().finalize_round()
