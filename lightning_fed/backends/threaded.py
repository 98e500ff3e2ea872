"""FedAvg rounds with several workers training at once, one thread each: ``FederatedStrategy(parallel_workers=N)``.

The seed's third flaw is sequential training: one worker after another, while the other cores wait. Here a round's
workers train ``N`` at a time, each in its own Python thread on its own copy of the LightningModule (a *replica*,
made once a fit) with its own optimizer, at one torch thread each: torch releases the GIL inside its operations, so
the threads' forward and backward passes overlap (``benchmarks/parallel_workers.py`` measures the gain)::

    for group in plan.workers, N at a time:            # one Lightning step per 32 local batches of the group
        for worker in group:                            # main thread: the global model into the worker's replica,
            replica.start(global model, its optimizer state)   # its batches gathered in its session
        in N threads, at once:
            with worker.session():                      # the worker is the current worker of its thread
                for batch in its local batches:         # your training_step on the replica, zero_grad, backward,
                    training_step(real); backward(); step()    # clipping, the optimizer's step
        main thread, in plan order:                     # self.log values, losses and statistics replayed
        rounds.deliver(worker, replica's tensors)       #   worker by worker, then each update (masked, clipped
    rounds.finalize()                                   #   under secure aggregation and DP) into the round

The arithmetic of each worker is the fused sequential path's, at one torch thread, and the updates reach the
aggregator in the plan's order, so a run equals ``parallel_workers=1, num_threads=1`` bit for bit (tested): the
``self.log`` values, per-worker losses, optimizer states and the global model. What differs:

* **Random operations** (dropout) draw from torch's one generator in whichever order the threads reach it: such a
  run is as valid but not reproducible bit for bit.
* **What runs needs fused local loops** (:mod:`~lightning_fed.backends.fused`) with nothing that observes a single
  local step: no overridden ``backward``/``on_*_backward``/``on_before_optimizer_step`` hooks (in the module or a
  callback), 32-bit precision, one optimizer, no aggregator that edits gradients at the workers (FedProx,
  SCAFFOLD). Anything else is refused at setup, naming it (:func:`thread_blockers`).
* **The threads share torch's thread budget**: no more workers train at once than torch's thread count in the
  main thread, which ``num_threads="auto"`` (the default) sets each round to the cores other processes leave free.
  On a 2-core machine with a busy core, a round's workers train one after another, at one torch thread each.
* ``training_step`` runs on a replica: ``self`` is not the module the Trainer holds (``self.log`` and
  ``self.trainer`` work as usual; attributes it sets stay on the replica). The replicas share the module's
  torchmetrics metrics (validation's work as usual); a ``training_step`` that updates one is stopped before it
  changes (:class:`MetricInThread`): threads would race on its state.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(TensorDataset(torch.randn(32, 4), torch.arange(32) % 2), workers=4,
    ...                                          batch_size=4)
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(parallel_workers=2), max_epochs=2, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> type(trainer.strategy.backend).__name__, trainer.global_step, trainer.strategy.round_index
    ('ThreadedBackend', 4, 2)
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.optim import Optimizer

from lightning_fed._compat.lightning import set_logging_batch
from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.wrapper import gradient_editors
from lightning_fed.backends.base import LocalWork
from lightning_fed.backends.batched_logs import batched_logs
from lightning_fed.backends.fused import FUSED_BATCHES, FusedBackend, step_hooks_overridden, stepped_already
from lightning_fed.backends.vectorized.functional import guarded_metrics
from lightning_fed.backends.vectorized.workers import recreate_optimizer
from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.rounds.module_state import is_metric, model_tensors, restore_plain_tensor_attributes
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.rounds.worker_state import delivery_lr, optimizer_params
from lightning_fed.workers.base import BaseWorker


class MetricInThread(FederatedConfigError):
    """``training_step`` updated a torchmetrics metric in a worker's thread (stopped before the metric changed)."""


def metric_in_thread(name: str) -> Exception:
    return MetricInThread(
        f"`parallel_workers`: training_step updates torchmetrics metric {name!r}, whose state several workers' "
        "threads would update at once: pass parallel_workers=1 to update it in training_step, or update it in "
        "validation_step only."
    )


# -- what a thread records, to replay in the main thread ---------------------------------------------------------------
class LogCalls:
    """Stands in for ``LightningModule.log`` on a replica: records each call (replayed in the main thread, where
    Lightning's logger connector lives)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, tuple, dict]] = []

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, value.detach() if isinstance(value, Tensor) else value, args, kwargs))


@dataclass
class LocalStep:
    """One local batch a worker trained: its batch, the loss (``None``: ``training_step`` skipped it) and what it
    logged."""

    batch: Any
    loss: Tensor | None
    logged: list[tuple[str, Any, tuple, dict]]


@dataclass
class ChunkResult:
    """What a worker's thread hands back for one chunk: the steps it took, and the error that stopped it."""

    steps: list[LocalStep] = field(default_factory=list)
    error: BaseException | None = None


# -- a replica: one thread's copy of the module ------------------------------------------------------------------------
class Replica:
    """A copy of the LightningModule and an optimizer over its parameters (one per thread, made once a fit).

    Args:
        module: the LightningModule (holds the global model; never changed here).
        optimizer: the user's optimizer (class and hyper-parameters copied; its state is the workers').
        clip_val / clip_algorithm: Lightning's gradient clipping, applied as its precision plugin does.
    """

    def __init__(self, module: LightningModule, optimizer: Optimizer, clip_val: Any, clip_algorithm: Any) -> None:
        self.source, self.user_optimizer = module, optimizer
        shared = {id(m): m for m in module.modules() if is_metric(m)}  # one metric object (updated in the main thread)
        self.module = copy.deepcopy(module, shared)  # Lightning's __getstate__ leaves the trainer out
        self.module.trainer = module.trainer
        self.tensors = model_tensors(self.module)  # parameters then buffers, the order the rounds average
        positions = {id(p): i for i, p in enumerate(module.parameters())}
        replica_params = list(self.module.parameters())
        self.user_params = optimizer_params(optimizer)
        self.params = [replica_params[positions[id(p)]] for p in self.user_params]
        self.optimizer = recreate_optimizer(optimizer, self.params)
        self.clip_val, self.clip_algorithm = clip_val, clip_algorithm or "norm"
        self._twin_of = {id(sub): twin for sub, twin in zip(module.modules(), self.module.modules())}
        self.module.log = LogCalls()  # an instance attribute shadows LightningModule.log (and log_dict's calls)

    def start(
        self, global_model: Sequence[Tensor], attributes: Mapping[tuple[int, str], Any], state: Sequence[Mapping] | None
    ) -> None:
        """The global model into the replica, and the module's plain tensor attributes as the round began
        (``attributes``: :attr:`Rounds.attributes <lightning_fed.rounds.Rounds.attributes>`, keyed by the module's
        submodules; what the replica set that they lack is removed, as the sequential path restores the module at
        each worker's start); the worker's optimizer state (``None``: fresh) into its optimizer, with the user's
        optimizer's hyper-parameters as they are now (LR schedulers move them between rounds)."""
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, list(global_model))
        here = {(id(self._twin_of[owner]), name): value for (owner, name), value in attributes.items()}
        restore_plain_tensor_attributes(self.module, here)
        for user_group, group in zip(self.user_optimizer.param_groups, self.optimizer.param_groups):
            group.update({key: value for key, value in user_group.items() if key != "params"})
        mine: defaultdict = defaultdict(dict)
        if state:
            for user_param, param in zip(self.user_params, self.params):
                if state[0].get(user_param):
                    mine[param] = state[0][user_param]  # by reference, as the sequential path moves states
        self.optimizer.state = mine

    def clear(self, global_model: Sequence[Tensor]) -> None:
        """Hold the global model again and no worker's gradients, optimizer state or logged values: nothing a worker
        computed stays in the replica past its round (under secure aggregation the server never sees a local model)."""
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, list(global_model))
        self.optimizer.state = defaultdict(dict)
        self.optimizer.zero_grad(set_to_none=True)  # the last step's gradients came from the worker's data
        self.module.log.calls = []  # type: ignore[union-attr]

    def state(self) -> list[defaultdict]:
        """The worker's optimizer state, keyed by the module's parameters (as the strategy keeps it)."""
        out: defaultdict = defaultdict(dict)
        for user_param, param in zip(self.user_params, self.params):
            if self.optimizer.state.get(param):
                out[user_param] = self.optimizer.state[param]
        return [out]

    def train(self, worker: BaseWorker, batches: Sequence[Any], first: int) -> ChunkResult:
        """``worker``'s local steps on ``batches`` (batch indices from ``first``), in its session; runs in a thread
        at one torch thread."""
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        result = ChunkResult()
        log: LogCalls = self.module.log  # type: ignore[assignment]
        try:
            with worker.session(None, "plan 'training_step'"):
                for batch_idx, real in enumerate(batches, start=first):
                    log.calls = []
                    output = self.module.training_step(real, batch_idx)
                    loss = output.get("loss") if isinstance(output, Mapping) else output
                    self.optimizer.zero_grad()
                    if loss is not None:
                        loss.backward()
                        self._clip()
                        self.optimizer.step()
                        loss = loss.detach()
                    result.steps.append(LocalStep(real, loss, log.calls))
        except Exception as err:  # the session named the worker; the main thread decides (raise or sit out)
            result.error = err
        return result

    def _clip(self) -> None:
        if not self.clip_val:
            return
        if self.clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.params, self.clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_val)


# -- what threads need -------------------------------------------------------------------------------------------------
def thread_blockers(trainer: Any, module: LightningModule, aggregator: Aggregator, precision: Any) -> list[str]:
    """What stops a run's workers from training in threads (empty: they can); fused local loops are checked apart."""
    found = step_hooks_overridden(trainer, module)
    if type(precision) is not Precision:
        found.append(f"precision={trainer.precision!r} (threads run 32-bit steps)")
    if len(trainer.optimizers) != 1:
        found.append(f"{len(trainer.optimizers)} optimizers (threads step one)")
    found += [f"{type(agg).__name__}, which edits gradients at the workers" for agg in gradient_editors(aggregator)]
    dropout = [name for name, sub in module.named_modules() if isinstance(sub, torch.nn.modules.dropout._DropoutNd)]
    if dropout and torch.are_deterministic_algorithms_enabled():
        found.append(f"Trainer(deterministic=True) with dropout modules {dropout} (their masks would depend on which "
                     "thread draws first)")  # fmt: skip
    return found


# -- the backend -------------------------------------------------------------------------------------------------------
class GroupChunk(LocalWork):
    """One Lightning step: up to :data:`FUSED_BATCHES` local batches of each worker of a group, from its ``first``."""

    __slots__ = ("first", "last", "round_index", "steps", "workers")

    def __init__(self, workers: tuple, steps: tuple, first: int, last: bool, round_index: int) -> None:
        self.workers, self.steps, self.first, self.last, self.round_index = workers, steps, first, last, round_index

    def __repr__(self) -> str:
        return f"GroupChunk({[w.id for w in self.workers]}, batches {self.first}..{self.first + FUSED_BATCHES})"


class ThreadedBackend(FusedBackend):
    """FedAvg rounds, ``parallel_workers`` workers at once, one thread each (see the module docstring)."""

    name = "workers in parallel threads"
    parallel_workers = 2

    def setup(self, trainer: Any) -> None:
        module = self.calls.module()
        (optimizer,) = self.calls.optimizers()
        clip = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        self.replicas = [Replica(module, optimizer, *clip) for _ in range(self.parallel_workers)]
        self.pool: ThreadPoolExecutor | None = ThreadPoolExecutor(self.parallel_workers, "lightning_fed-worker")
        self._sources: dict[Any, Iterator[Any]] = {}
        self._done: dict[Any, int] = {}  # local steps each worker of the group has taken
        self._failed_ids: set[Any] = set()
        self._group: GroupChunk | None = None  # the group training now (delivers after its last chunk)

    def round_length(self, plan: RoundPlan) -> int:
        return sum(1 for _ in self.round_batches(plan))

    def round_batches(self, plan: RoundPlan) -> Iterator[GroupChunk]:
        n = self.parallel_workers
        for start in range(0, len(plan.workers), n):
            workers, steps = plan.workers[start : start + n], plan.steps[start : start + n]
            last = max(steps, default=0)
            for first in range(0, max(last, 1), FUSED_BATCHES):
                yield GroupChunk(workers, steps, first, first + FUSED_BATCHES >= last, plan.round_index)

    def batch_start(self, batch: Any) -> Any:
        if not isinstance(batch, GroupChunk):
            return super().batch_start(batch)  # a clear error for anything that is not the federated loader's
        rounds = self.rounds
        self.open_step(batch)
        assert self.planner is not None and self.loader is not None
        if batch.first == 0:  # the group's first Lightning step: each worker starts from the global model
            positions = self.planner.position_source
            for worker, steps, replica in zip(batch.workers, batch.steps, self.replicas):
                rounds.aggregator.worker_start(worker.id, rounds.global_)
                replica.start(rounds.global_, rounds.attributes, rounds.optimizer_states.get(worker.id))
                batches = self.planner.worker_batches(worker, steps, batch.round_index, positions)
                self._sources[worker.id], self._done[worker.id] = iter(batches), 0
            self._group = batch
        self.skip = False
        self.calls.progress("Round", batch.workers[0])
        return batch

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        group: GroupChunk = self.batch
        assert self.loader is not None and self.pool is not None
        work = []
        for worker, steps, replica in zip(group.workers, group.steps, self.replicas):
            count = min(FUSED_BATCHES, steps - group.first)
            if count <= 0 or worker.id in self._failed_ids:
                continue
            with self.at_shard(worker) as shard:  # the worker's batches, read in its session
                source = self._sources[worker.id]
                work.append((worker, replica, self.gather_batches(shard, [next(source) for _ in range(count)])))
        at_once = max(1, torch.get_num_threads())  # the torch thread budget (num_threads): one a worker thread
        results = []
        with guarded_metrics(self.calls.module(), metric_in_thread):  # the replicas share the module's metrics
            for start in range(0, len(work), at_once):
                jobs = [(w, self.pool.submit(r.train, w, b, group.first)) for w, r, b in work[start : start + at_once]]
                results += [(worker, future.result()) for worker, future in jobs]
        for worker, result in results:  # in plan order: logs, losses and failures as the sequential path has them
            self._replay(worker, result)
        return self.calls.skipped_output()

    def _replay(self, worker: BaseWorker, result: ChunkResult) -> None:
        rounds, trainer, module = self.rounds, self.calls.trainer(), self.calls.module()
        with batched_logs(module) as logs:  # merged per worker's chunk, as the fused path's Lightning step merges
            for step in result.steps:
                rounds.failures.skip_batch(worker.id)  # counts the worker's batches
                rounds.stats.step(worker.id)
                set_logging_batch(trainer, step.batch)
                logs.batch = step.batch
                for name, value, args, kwargs in step.logged:
                    module.log(name, value, *args, **kwargs)
                if step.loss is not None:
                    self.record(worker, step.loss, step.batch)
                self._done[worker.id] += 1  # as the fused path counts: a batch training_step skipped is a local step
        if result.error is not None:  # the batch that raised counts, as in the fused path
            rounds.failures.skip_batch(worker.id)
            rounds.stats.step(worker.id)
            if not self.tolerate_failures or isinstance(result.error.__cause__, FederatedConfigError):
                raise result.error
            cause = result.error.__cause__ if isinstance(result.error, WorkerError) else None  # the session's wrap
            rounds.failures.record_failure(worker.id, cause or result.error)  # it sits the rest of the round out
            self._failed_ids.add(worker.id)

    def optimizer_step(self, optimizer: Optimizer, closure: Any, model: Any, kwargs: dict) -> Any:
        group = self.batch
        if not isinstance(group, GroupChunk):
            return super().optimizer_step(optimizer, closure, model, kwargs)
        try:
            with stepped_already():
                out = closure()
            if group.last:
                self._deliver(group)
        finally:
            self.batch = None
        self.end_step()
        return out

    def _deliver(self, group: GroupChunk) -> None:
        """Each worker of the group delivers its update, in plan order; its optimizer state goes back to it."""
        rounds = self.rounds
        lr = delivery_lr(self.calls.optimizers())
        for worker, replica in zip(group.workers, self.replicas):
            failed = worker.id in self._failed_ids
            tensors = rounds.global_ if failed else [t.detach() for t in replica.tensors]
            if self._done.get(worker.id) or rounds.optimizer_states.get(worker.id) is not None:
                rounds.optimizer_states.put(worker.id, replica.state())
            rounds.deliver(worker, tensors, self._done.pop(worker.id, 0), lr)
            self._sources.pop(worker.id, None)
        self._failed_ids.clear()
        self._group = None

    def finalize_round(self) -> None:
        if self._group is not None and self.rounds.is_open:  # fit stopped between a group's steps: it delivers
            self._deliver(self._group)
        closing = self.rounds.is_open
        try:
            super().finalize_round()
        finally:
            if closing:  # the last group's local models leave the replicas with their round (even one that failed)
                for replica in self.replicas:
                    replica.clear(self.rounds.global_)

    def teardown(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
            # a thread's set_num_threads(1) also became the count threads started later take; the main thread's own
            # count (the governor's) never changed: make it theirs again
            torch.set_num_threads(torch.get_num_threads())
        self.replicas = []
        super().teardown()

    def describe(self) -> str:
        return (
            super().describe() + f"; {self.parallel_workers} workers at once, one thread each (no more than torch's "
            "thread count)"
        )
