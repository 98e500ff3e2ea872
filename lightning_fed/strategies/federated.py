"""``FederatedStrategy``: an unchanged LightningModule trains federated, with one Trainer for the whole run.

The train dataloader (from :class:`~lightning_fed.data.FederatedDataModule`) yields batches of pointers. For each
batch the strategy sends the worker that owns it a plan message; the worker resolves the pointers to its own
tensors and runs the user's ``training_step``, ``backward`` and the optimizer step there. The strategy never
``get()``s data.

Two ways of training:

* ``mode="fedavg"`` (default): a Lightning epoch is a round. Each sampled worker starts from the global model,
  trains ``local_epochs`` over its shard (or ``local_steps`` batches) with its own optimizer state, and the global
  model becomes the aggregate (sample-weighted mean for FedAvg) of the workers' updates. Validation then runs
  locally on the global model.
* ``mode="follow"`` (alias ``"seed"``): the seed tutorial's way: one model follows every batch to its worker and
  back, so training equals centralized training on the same batch order.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(
    ...     TensorDataset(torch.randn(32, 4), torch.arange(32) % 2), workers=["westside", "grapevine"], batch_size=8
    ... )
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=2, logger=False, enable_checkpointing=False,
    ...                      enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> trainer.strategy.round_index, sorted(trainer.strategy.worker_summary())
    (2, ['grapevine', 'westside'])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_fed.aggregation import Aggregator
from lightning_fed.aggregation.functional import model_delta
from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import FederatedConfigError, PointerError
from lightning_fed.pointers.pointer_tensor import refs_of
from lightning_fed.privacy.dp import DPConfig, DPSGDAggregator, PrivacyMonitor, find_dp
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.strategies.lightning_glue import RoundLoader, sync_round_length
from lightning_fed.strategies.parallel import FederatedParallelStrategy
from lightning_fed.strategies.parts import build_aggregator, model_tensors, per_worker_schedulers
from lightning_fed.strategies.reporting import (
    WorkerLosses,
    batch_size_of,
    capture_rng,
    describe_progress,
    restore_rng,
    worker_summary,
    worker_table,
)
from lightning_fed.strategies.robustness import ByzantineWorkers, ClientFailures
from lightning_fed.strategies.rounds import RoundPlan, RoundPlanner
from lightning_fed.strategies.vectorized import (
    Cohort,
    VectorizedWorkers,
    VectorStep,
    check_vectorizable,
    cohort_steps,
    plan_cohorts,
)
from lightning_fed.strategies.worker_state import WorkerOptimizerStates, WorkerSchedulerStates
from lightning_fed.workers.base import BaseWorker, current_worker, me
from lightning_fed.workers.messages import PlanMessage

_MODES = {"fedavg": "fedavg", "follow": "follow", "seed": "follow"}
_RUN_PLAN = "lightning_fed.strategy.run"
_CHECKPOINT_KEY = "federated"


class FederatedStrategy(FederatedParallelStrategy):
    """Routes each training step to the worker that owns the batch; aggregates rounds (see module docstring).

    Args:
        mode: ``"fedavg"`` (rounds and aggregation) or ``"follow"``/``"seed"`` (one model follows the batches).
        aggregation: an aggregator name (``"fedavg"``) or an :class:`~lightning_fed.aggregation.Aggregator`.
        local_epochs: passes over its shard each sampled worker makes per round.
        local_steps: batches per worker per round instead of ``local_epochs`` (cycling and reshuffling the shard).
        clients_per_round: workers sampled per round: an int, a fraction in (0, 1], or ``None`` for all.
        reset_optimizer_state: start every worker's optimizer state afresh each round (default: keep it).
        seed: drives client sampling; ``None`` takes the train loader's seed (so one seed drives the run).
        min_clients: the fewest worker updates a round needs; fewer stops the run with ``RoundFailedError``.
        tolerate_failures: when a worker's ``training_step`` raises, leave that worker out of the round and go on
            (a simulated client failure, see :mod:`~lightning_fed.strategies.robustness`) instead of stopping the
            run with the error. Off by default: in a simulation an exception is usually a bug.
        dropout_rate: simulated dropout: the probability a sampled worker drops out of a round (seeded by round).
        deadline_steps: simulated stragglers: a worker stops after this many local batches in a round.
        straggler_policy: ``"drop"`` (default, as FedAvg) or ``"partial"`` (as FedProx): whether the update of a
            worker stopped by ``deadline_steps`` counts.
        privacy: a :class:`~lightning_fed.privacy.dp.DPConfig`: client-level DP-FedAvg (clipped updates, noise on
            the sum) or sample-level DP-SGD at each worker (Opacus), with Opacus' accountant; ``dp/epsilon`` is
            logged every round.
        secure_aggregation: ``True`` or a :class:`~lightning_fed.secure_aggregation.SecureAggregationConfig`: the
            round's sum is taken by secure aggregation (pairwise masks, dropout recovery); needs a sum aggregator.
        byzantine: a Byzantine simulation: :class:`~lightning_fed.strategies.robustness.ByzantineWorkers` or a dict
            such as ``{"w3": "scale:100"}`` / ``{"w3": ("sign_flip", 1.0)}`` transforming those workers' updates.
        vectorize: train each round's workers together, as one ``torch.vmap`` computation over stacked copies of the
            model (see :mod:`~lightning_fed.strategies.vectorized`): the same result as training them one after
            another, much faster for many small clients. FedAvg mode only.
        start_method, process_group_backend, timeout, cluster_environment: for ``Trainer(devices=N, num_nodes=M)``
            with ``N * M > 1``: each process trains its share of the workers (see
            :mod:`~lightning_fed.strategies.distributed`); as in Lightning's ``DDPStrategy``
            (:class:`~lightning_fed.strategies.parallel.FederatedParallelStrategy`).
    """

    strategy_name = "federated"

    def __init__(
        self,
        mode: str = "fedavg",
        aggregation: str | Aggregator = "fedavg",
        local_epochs: int = 1,
        local_steps: int | None = None,
        clients_per_round: int | float | None = None,
        reset_optimizer_state: bool = False,
        seed: int | None = None,
        min_clients: int = 1,
        tolerate_failures: bool = False,
        dropout_rate: float = 0.0,
        deadline_steps: int | None = None,
        straggler_policy: str = "drop",
        byzantine: ByzantineWorkers | dict[Hashable, Any] | None = None,
        secure_aggregation: bool | SecureAggregationConfig = False,
        privacy: DPConfig | None = None,
        vectorize: bool = False,
        start_method: str = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        cluster_environment: ClusterEnvironment | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,  # type: ignore[arg-type]
        )
        if mode not in _MODES:
            raise FederatedConfigError(f"`mode={mode!r}` is not valid: choose 'fedavg' or 'follow' (alias 'seed').")
        if isinstance(local_epochs, bool) or not isinstance(local_epochs, int) or local_epochs < 1:
            raise FederatedConfigError(f"`local_epochs={local_epochs!r}` is not valid: pass an integer >= 1.")
        if local_steps is not None and (
            isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1
        ):
            raise FederatedConfigError(f"`local_steps={local_steps!r}` is not valid: pass an integer >= 1 or None.")
        self.mode = _MODES[mode]
        self._aggregator = build_aggregator(aggregation, secure_aggregation, privacy, self.mode)
        self._dp = find_dp(self._aggregator)  # the differential-privacy wrapper in the chain, if any
        if not isinstance(tolerate_failures, bool):
            raise FederatedConfigError(f"`tolerate_failures={tolerate_failures!r}` is not valid: pass True or False.")
        self.tolerate_failures = tolerate_failures
        self._failures = ClientFailures(dropout_rate, deadline_steps, straggler_policy, min_clients)
        self._byzantine = ByzantineWorkers.coerce(byzantine)
        if self.mode == "follow" and (self._failures.enabled or self._byzantine is not None):
            raise FederatedConfigError(
                "`dropout_rate`, `deadline_steps` and `byzantine` simulate failures in federated rounds: use them with "
                "mode='fedavg', not mode='follow'."
            )
        if not isinstance(vectorize, bool):
            raise FederatedConfigError(f"`vectorize={vectorize!r}` is not valid: pass True or False.")
        if vectorize and self.mode == "follow":
            raise FederatedConfigError(
                "`vectorize=True` trains a round's workers together: it needs mode='fedavg', got mode='follow' (where "
                "one model follows the batches one after another)."
            )
        if vectorize and tolerate_failures:
            raise FederatedConfigError(
                "`vectorize=True` cannot tell which worker's training_step raised, so it cannot be combined with "
                "`tolerate_failures=True`: pass one of them."
            )
        self.vectorize = vectorize
        self._vector: VectorizedWorkers | None = None  # the stacked workers (vectorize=True)
        self._cohorts: list[Cohort] = []
        self._round_total = 0  # Lightning steps in the open round
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.clients_per_round = clients_per_round
        self.seed = seed
        self._worker_states = WorkerOptimizerStates(reset_each_round=reset_optimizer_state)
        self._worker_schedules = WorkerSchedulerStates()
        self._step_schedulers: list[Any] = []
        self._loader: FederatedDataLoader | None = None
        self._planner: RoundPlanner | None = None
        self._plan: RoundPlan | None = None
        self._round_open = False
        self._round_index = 0
        self._steps_in_round = 0
        self._active: BaseWorker | None = None
        self._module_is_global = True
        self._tensors: list[Tensor] = []
        self._global: list[Tensor] = []
        self._batch: Any = None
        self._real_batch: Any = None
        self._pending: Callable[[Any], Any] | None = None
        self._pending_result: Any = None
        self._restored: dict[str, Any] | None = None
        self._val_stash: list[Tensor] | None = None
        self._stats: dict[Hashable, dict[str, Any]] = {}
        self._local_steps = 0
        self._num_params = 0
        self._losses = WorkerLosses()  # per-worker mean training loss, logged once a round (not once a step)
        self._skip = False  # the current batch's worker dropped out, failed, or is past its deadline
        self._vector_active: list[bool] = []  # which workers of the current vectorized step train
        self._stepping = False  # inside the worker's optimizer step (the backward that precedes a step)

    # -- parts the strategy owns ----------------------------------------------------------------------------------
    @property
    def aggregator(self) -> Aggregator:
        return self._aggregator

    @property
    def round_index(self) -> int:
        """Rounds completed (aggregated) so far."""
        return self._round_index

    @property
    def workers(self) -> list[BaseWorker]:
        return list(self._loader.workers) if self._loader is not None else []

    # -- devices and processes: see FederatedParallelStrategy (one process, or each process its share of workers) --
    @override
    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        module = self.lightning_module
        if self.mode == "fedavg" and not module.automatic_optimization and trainer.training:
            raise FederatedConfigError(
                "FederatedStrategy(mode='fedavg') needs `automatic_optimization=True` in your LightningModule (it "
                "steps each worker's optimizer itself); use mode='follow' for manual optimization."
            )
        self._tensors = model_tensors(module)
        self._num_params = len(list(module.parameters()))
        self._step_schedulers = per_worker_schedulers(trainer) if self.mode == "fedavg" else []
        if self.vectorize and trainer.training:
            check_vectorizable(module, trainer, self._aggregator)
            self._vector = VectorizedWorkers(
                module, self.optimizers[0], self._worker_states, trainer.gradient_clip_val,
                trainer.gradient_clip_algorithm,
            )  # fmt: skip
        if self._dp is not None and not any(isinstance(c, PrivacyMonitor) for c in trainer.callbacks):
            trainer.callbacks.append(PrivacyMonitor())  # logs dp/epsilon each round, stops at target_epsilon

    # -- data -----------------------------------------------------------------------------------------------------
    @override
    def process_dataloader(self, dataloader: object) -> object:
        if not isinstance(dataloader, FederatedDataLoader):
            return dataloader
        self._loader = dataloader
        for worker in dataloader.workers:
            worker.install_plan(_RUN_PLAN, self._run_plan)
            self._stats.setdefault(worker.id, {"samples": len(dataloader.federated_dataset[worker.id]), "steps": 0})
        if self.mode == "follow":
            return dataloader
        seed = dataloader.seed if self.seed is None else self.seed
        self._planner = self._round_planner(  # over several processes: this process's share of each round
            dataloader,
            clients_per_round=self.clients_per_round,
            local_epochs=self.local_epochs,
            local_steps=self.local_steps,
            seed=seed,
        )
        worker_ids = [w.id for w in dataloader.workers]
        self._aggregator.setup(worker_ids)
        self._aggregator.setup_model(self._num_params)
        self._aggregator.check_num_clients(self._planner.clients_per_round)
        self._failures.check_setup(self._planner.clients_per_round)
        if self._byzantine is not None:
            self._byzantine.check_workers(worker_ids)
        dp = self._dp
        if isinstance(dp, DPSGDAggregator):  # sample-level DP-SGD: per-sample gradients, Poisson batches
            plan = self._planner.plan(0)
            steps = dict(zip((w.id for w in plan.workers), plan.steps))
            steps_per_round = {w.id: steps.get(w.id, self._planner.steps_for(w)) for w in dataloader.workers}
            dp.attach_federated(self.lightning_module, dataloader, steps_per_round=steps_per_round)
            self._planner.batch_source = lambda worker, epoch: dp.worker_batches(dataloader, worker, epoch)
        return RoundLoader(self._planner, self)

    def round_plan(self, round_index: int) -> RoundPlan:
        if self._planner is None:
            raise FederatedConfigError("no federated train dataloader yet: use a FederatedDataModule.")
        return self._planner.plan(round_index)

    def _on_set_round(self, round_index: int) -> None:
        """Called with the round about to run (Lightning's ``set_epoch``); keeps Lightning's batch count right."""
        if self.mode == "fedavg" and self._trainer_or_none() is not None:
            sync_round_length(self.lightning_module.trainer, self._round_length(self.round_plan(round_index)))

    def _plan_cohorts(self, plan: RoundPlan) -> list[Cohort]:
        optimizer = self.optimizers[0] if self.optimizers else None
        return plan_cohorts(plan.workers, plan.steps, self._worker_states, optimizer)

    def _round_length(self, plan: RoundPlan) -> int:
        """Lightning steps in the round: one per batch, or one per vectorized step of each cohort."""
        if self._vector is None:
            return plan.total_steps
        self._apply_restored_state()  # cohorts depend on the workers' optimizer states: a resume must load them first
        return sum(c.length for c in self._plan_cohorts(plan))

    def _round_batches(self, plan: RoundPlan) -> Iterator[Any]:
        """What the round loader yields: pointer batches, worker after worker, or vectorized steps."""
        assert self._planner is not None
        if self._vector is None:
            for _worker, batch in self._planner.batches(plan):
                yield batch
        else:
            yield from cohort_steps(self._cohorts, self._planner, plan.round_index)

    # -- the round lifecycle (FedAvg) -----------------------------------------------------------------------------
    def _begin_round(self, plan: RoundPlan) -> None:
        self._finalize_round()
        accumulate = self.lightning_module.trainer.accumulate_grad_batches
        steps = plan.steps + tuple(self._failures.effective_steps(plan.steps))  # a deadline cuts a worker's steps
        if accumulate > 1 and any(s % accumulate for s in steps):
            raise FederatedConfigError(
                f"`accumulate_grad_batches={accumulate}` does not divide the batches each worker trains per round "
                f"({dict(zip((w.id for w in plan.workers), plan.steps))}, deadline_steps="
                f"{self._failures.deadline_steps}): gradients would mix workers. Choose local_steps, deadline_steps "
                "or a batch size that makes them divisible."
            )
        if not self._global:
            self._global = [t.detach().clone() for t in self._tensors]
        else:
            torch._foreach_copy_(self._global, [t.detach() for t in self._tensors])
        set_participants = getattr(self._aggregator, "set_participants", None)
        if callable(set_participants):  # secure aggregation exchanges keys with the round's workers up front
            set_participants([w.id for w in plan.workers])
        self._aggregator.begin_round(self._global)
        assert self._planner is not None
        self._failures.begin_round(
            plan.round_index, [w.id for w in plan.workers], [w.id for w in self._planner.workers], self._planner.seed
        )
        self._plan = plan
        self._cohorts = self._plan_cohorts(plan) if self._vector is not None else []
        self._round_total = sum(c.length for c in self._cohorts) if self._vector is not None else plan.total_steps
        self._round_open = True
        self._steps_in_round = 0
        self._module_is_global = True

    def _switch_to(self, worker: BaseWorker) -> None:
        if self._active is not None:
            self._finish_worker(self._active)
        if not self._module_is_global:
            with torch.no_grad():
                torch._foreach_copy_(self._tensors, self._global)
        self._worker_states.activate(worker.id, self.optimizers)
        self._worker_schedules.activate(worker.id, self._step_schedulers)
        self._active = worker
        self._module_is_global = False
        self._local_steps = 0
        self._aggregator.worker_start(worker.id, self._global)

    def _finish_worker(self, worker: BaseWorker) -> None:
        self._deliver(worker)
        self._worker_states.deactivate(self.optimizers)
        self._active = None

    def _deliver(self, worker: BaseWorker, tensors: list[Tensor] | None = None, steps: int | None = None) -> None:
        """The worker's update goes into the round (at the worker), unless it failed, dropped out, or was late under
        ``straggler_policy="drop"``: then the aggregator is told it dropped."""
        if self._failures.finish(worker.id):
            self._in_worker(worker, lambda _: self._send_update(worker, tensors, steps))
        else:
            drop = getattr(self._aggregator, "drop", None)
            if callable(drop):
                drop(worker.id)

    def _send_update(self, worker: BaseWorker, tensors: list[Tensor] | None = None, steps: int | None = None) -> None:
        """Runs at the worker: its update, through the aggregator's worker-side hooks, into the round's sum.

        ``tensors``: the worker's model tensors (default: the module's); ``steps``: its local steps. With secure
        aggregation, ``accumulate`` masks the update here, so what reaches the server is masked.
        """
        with torch.no_grad():
            local = [t.detach() for t in self._tensors] if tensors is None else tensors
            update = model_delta(local, self._global)
            lr = float(self.optimizers[0].param_groups[0]["lr"]) if self.optimizers else 0.0
            num_steps = self._local_steps if steps is None else steps
            update = self._aggregator.worker_update(worker.id, update, num_steps, lr)
            if self._byzantine is not None:
                update = self._byzantine(worker.id, update, self._global)
        self._aggregator.accumulate(update, weight=self._stats[worker.id]["samples"], worker_id=worker.id)

    def _finalize_round(self) -> None:
        if not self._round_open:
            return
        if self._active is not None:
            self._finish_worker(self._active)
        if self._vector is not None and self._vector.cohort is not None:
            self._finish_cohort()
        self._sync_round()  # over several processes: combine the round (the same in every process); else a no-op
        self._losses.flush(self.lightning_module.trainer)
        try:
            self._failures.end_round()  # raises when fewer than min_clients delivered an update
            if self._aggregator.num_contributions > 0:
                new = self._aggregator.finalize(self._global)
                with torch.no_grad():
                    torch._foreach_copy_(self._global, new)
                self._round_index += 1
        finally:  # on failure the module keeps the last global model
            with torch.no_grad():
                torch._foreach_copy_(self._tensors, self._global)
            self._module_is_global = True
            self._round_open = False
            self._skip = False
            self._worker_states.end_round()
            if self._worker_states.reset_each_round:
                self._worker_schedules.reset()

    def _round_is_complete(self) -> bool:
        if self._plan is None:
            return False
        limit = self.lightning_module.trainer.num_training_batches
        return self._steps_in_round >= min(self._round_total, limit)

    # -- the training step, at the worker -------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._idle_step(batch):  # over several processes: this process waits for the busiest one
            return
        if isinstance(batch, VectorStep):
            self._vector_batch_start(batch)
            return
        try:
            _, worker = refs_of(batch)
        except PointerError as err:
            raise FederatedConfigError(
                f"FederatedStrategy got a training batch that is not a pointer batch at one worker ({err}). The train "
                "dataloader must yield pointers: wrap your datamodule in lightning_fed.FederatedDataModule(...)."
            ) from err
        self._batch = batch
        self._steps_in_round += 1
        if self.mode == "fedavg" and worker is not self._active:
            self._switch_to(worker)
        self._active = worker
        self._skip = self.mode == "fedavg" and self._failures.skip_batch(worker.id)
        dp = self._dp
        if isinstance(dp, DPSGDAggregator) and not dp.can_step(worker.id):
            self._skip = True  # this worker's privacy budget is spent
        if not self._skip:
            self._stats[worker.id]["steps"] += 1
        describe_progress(self.lightning_module.trainer, "Round" if self.mode == "fedavg" else "Epoch", worker)

    def _run_plan(self, real_batch: Any) -> None:
        """The plan every worker runs: the pending step function, on the worker's own batch."""
        fn, self._pending = self._pending, None
        self._pending_result = fn(real_batch) if fn is not None else None

    def _in_worker(self, worker: BaseWorker, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(None)`` as the worker's plan, in its context."""
        self._pending = fn
        try:
            me._send(PlanMessage(_RUN_PLAN, (None,)), worker)
            return self._pending_result
        finally:
            self._pending, self._pending_result = None, None

    def _at_worker(self, batch: Any, fn: Callable[[Any], Any]) -> Any:
        refs, worker = refs_of(batch)
        self._pending = fn
        try:
            me._send(PlanMessage(_RUN_PLAN, (refs,)), worker)
            return self._pending_result
        finally:
            self._pending, self._pending_result = None, None

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if self._skip:  # Lightning skips backward and the step for a ``None`` output (a no-op loss over processes)
            return self._skipped_step_output()
        batch = args[0] if args else kwargs.pop("batch")
        if isinstance(batch, VectorStep):
            return self._vector_training_step(batch, args[1] if len(args) > 1 else kwargs.get("batch_idx", 0))
        rest = args[1:]
        if self._real_batch is not None and current_worker() is self._active:
            return self._user_training_step(self._real_batch, rest, kwargs)
        out = self._at_worker(batch, lambda real: self._user_training_step(real, rest, kwargs))
        if not self.lightning_module.automatic_optimization and self._round_is_complete():
            self._finalize_round()
        return out

    def _user_training_step(self, real_batch: Any, rest: tuple, kwargs: dict) -> Any:
        try:
            output = super().training_step(real_batch, *rest, **kwargs)
        except Exception as err:
            if self.mode != "fedavg" or self._active is None or not self.tolerate_failures:
                raise
            self._failures.record_failure(self._active.id, err)  # this worker sits the rest of the round out
            self._skip = True
            self.lightning_module.zero_grad(set_to_none=True)  # the optimizer step that follows changes nothing
            return self._skipped_step_output()
        loss = output.get("loss") if isinstance(output, dict) else output
        if isinstance(loss, Tensor) and self._active is not None:
            self._losses.add(self._active.id, loss.detach(), batch_size_of(real_batch))
            self._stats[self._active.id]["last_loss"] = loss.detach()
        return output

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        if current_worker() is not None:  # manual optimization: already inside the worker's training_step
            self._local_steps += 1
            return super().optimizer_step(optimizer, closure, model, **kwargs)

        if isinstance(self._batch, VectorStep):
            return self._vector_optimizer_step(closure)

        def step(real_batch: Any) -> Any:
            self._real_batch = real_batch
            self._stepping = True
            try:
                return super(FederatedStrategy, self).optimizer_step(optimizer, closure, model, **kwargs)
            finally:
                self._real_batch = None
                self._stepping = False

        try:
            if self._skip:  # Lightning needs its closure run: training_step returns None, no backward, no step
                out = closure()
            else:
                out = self._at_worker(self._batch, step)
                if not self._skip:  # the worker did not fail during this step
                    self._local_steps += 1
        finally:
            self._batch = None  # the batch's objects are freed at the worker as soon as Lightning drops it too
        if self.mode == "fedavg" and self._round_is_complete():
            self._finalize_round()
        return out

    @override
    def post_backward(self, closure_loss: Tensor) -> None:
        if self.mode == "fedavg" and self._active is not None and self._stepping:  # once per step, not per backward
            n = self._num_params
            params = self._tensors[:n]
            scaler = getattr(self.precision_plugin, "scaler", None)  # fp16 AMP: the gradients are still scaled here
            grads = [p.grad for p in params if p.grad is not None] if scaler is not None else []
            scale = scaler.get_scale() if grads else 1.0
            if grads:
                torch._foreach_div_(grads, scale)  # a power of two: exact
            self._aggregator.adjust_gradients(self._active.id, params, self._global[:n])
            if grads:
                torch._foreach_mul_(grads, scale)

    # -- vectorized workers (vectorize=True) ----------------------------------------------------------------------
    def _vector_batch_start(self, step: VectorStep) -> None:
        vector = self._vector
        assert vector is not None
        if vector.cohort is not step.cohort:
            if vector.cohort is not None:
                self._finish_cohort()
            vector.start(step.cohort)
            for worker in step.cohort.workers:
                self._aggregator.worker_start(worker.id, self._global)
        self._batch = step
        self._steps_in_round += 1
        self._vector_active = [
            batch is not None and not self._failures.skip_batch(worker.id)
            for worker, batch in zip(step.cohort.workers, step.batches)
        ]
        self._skip = not any(self._vector_active)
        for worker, active in zip(step.cohort.workers, self._vector_active):
            if active:
                self._stats[worker.id]["steps"] += 1
        describe_progress(self.lightning_module.trainer, "Round", step.cohort.workers[0])

    def _vector_training_step(self, step: VectorStep, batch_idx: int) -> Tensor:
        assert self._vector is not None
        real = [
            self._at_worker(batch, lambda b: b) if active else None
            for batch, active in zip(step.batches, self._vector_active)
        ]
        device = self.root_device
        real = [None if b is None else self.batch_to_device(b, device) for b in real]
        losses = self._vector.compute(real, self._vector_active, batch_idx)
        workers = step.cohort.workers
        total, count = 0.0, 0
        for k, loss in losses:
            size = batch_size_of(real[k])
            self._losses.add(workers[k].id, loss, size)
            self._stats[workers[k].id]["last_loss"] = loss
            total, count = total + loss * (size or 1), count + (size or 1)
        return total / count  # for Lightning's progress bar; `backward` skips it (the gradients are computed)

    @override
    def backward(self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        if isinstance(self._batch, VectorStep):
            return closure_loss
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    def _vector_optimizer_step(self, closure: Callable[[], Any]) -> Any:
        step = self._batch
        assert isinstance(step, VectorStep) and self._vector is not None
        try:
            out = closure()  # runs training_step: the vectorized forward and gradients (backward is skipped)
            if not self._skip:
                self._vector.step()
        finally:
            self._batch = None
        if step.step == step.cohort.length - 1:
            self._finish_cohort()
        if self._round_is_complete():
            self._finalize_round()
        return out

    def _finish_cohort(self) -> None:
        assert self._vector is not None
        buffers = [t.detach() for t in self._tensors[self._num_params :]]  # not trained here: the global values
        for worker, params, steps in self._vector.finish():
            self._deliver(worker, params + buffers, steps)

    # -- evaluation on the global model ---------------------------------------------------------------------------
    @override
    def on_validation_start(self) -> None:
        if self._round_open and self._round_is_complete():
            self._finalize_round()
        if self.mode == "follow":
            self._losses.flush(self.lightning_module.trainer)
        if self._round_open and not self._module_is_global:  # mid-round validation: evaluate the global model
            self._val_stash = [t.detach().clone() for t in self._tensors]
            with torch.no_grad():
                torch._foreach_copy_(self._tensors, self._global)

    @override
    def on_validation_end(self) -> None:
        if self._val_stash is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._tensors, self._val_stash)
            self._val_stash = None

    # -- start and end of fit -------------------------------------------------------------------------------------
    @override
    def on_train_start(self) -> None:
        self._apply_restored_state()
        rank_zero_info(self.summary())

    def _apply_restored_state(self) -> None:
        if self._restored is not None and self.optimizers:
            self._load_federated_state(self._restored)
            self._restored = None

    @override
    def on_train_end(self) -> None:
        self._batch = None
        self._finalize_round()
        self._losses.flush(self.lightning_module.trainer)
        rank_zero_info(self.worker_table())

    @override
    def teardown(self) -> None:
        dp = self._dp
        if isinstance(dp, DPSGDAggregator):
            dp.detach()
        for worker in self.workers:
            worker.remove_plan(_RUN_PLAN)
        super().teardown()

    def summary(self) -> str:
        """The configuration, as logged at fit start."""
        workers = ", ".join(f"{w.id} ({self._stats.get(w.id, {}).get('samples', '?')} samples)" for w in self.workers)
        how = (
            f"FedAvg rounds with {self._aggregator!r}, local_epochs={self.local_epochs}, local_steps={self.local_steps}"
            f", clients_per_round={self.clients_per_round or 'all'}, {self._failures.describe()}"
            + (f", {self._byzantine!r}" if self._byzantine is not None else "")
            if self.mode == "fedavg"
            else "the model follows each batch to its worker (the seed's way)"
        )
        return f"FederatedStrategy: {len(self.workers)} workers [{workers}]; {how}."

    def worker_summary(self) -> dict[Hashable, dict[str, Any]]:
        """Per worker: samples, steps trained, last loss, and rounds it failed in, dropped out of, or was late for."""
        return worker_summary(self._stats, self._failures)

    def worker_table(self) -> str:
        """:meth:`worker_summary` as a text table (logged at the end of fit)."""
        return worker_table(self.worker_summary())

    # -- checkpoints ----------------------------------------------------------------------------------------------
    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self._round_open and self._round_is_complete():
            self._finalize_round()
        state = self.lightning_module.state_dict(keep_vars=True)
        if self._round_open and not self._module_is_global:  # mid-round: the global model is the snapshot
            index = {id(t): i for i, t in enumerate(self._tensors)}
            state = {k: self._global[index[id(v)]] if id(v) in index else v for k, v in state.items()}
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in state.items()}

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if self._round_open and not self._round_is_complete():
            rank_zero_warn(
                "Saving a checkpoint in the middle of a federated round: it holds the global model of the round's "
                "start, and resuming from it replays the whole round."
            )
        checkpoint[_CHECKPOINT_KEY] = self._gather_state(self._federated_state())  # every process's part
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(
            checkpoint_path, weights_only=False if weights_only is None else weights_only
        )
        self._restored = checkpoint.get(_CHECKPOINT_KEY)
        return checkpoint

    def _federated_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "mode": self.mode,
            "round_index": self._round_index,
            "optimizer_states": self._worker_states.to_checkpoint(self.optimizers),
            "scheduler_states": self._worker_schedules.state_dict(),
            "aggregator": self._aggregator.state_dict(),
            "failures": self._failures.state_dict(),
            "stats": self.worker_summary(),
            "rng": capture_rng(),
        }

    def _load_federated_state(self, state: dict[str, Any]) -> None:
        state = self._select_state(state)  # over several processes: this process's RNG and aggregator state
        self._round_index = int(state.get("round_index", 0))
        self._worker_states.load_checkpoint(state.get("optimizer_states", {}), self.optimizers)
        self._worker_schedules.load_state_dict(state.get("scheduler_states", {}))
        self._aggregator.load_state_dict(state.get("aggregator", {}))
        self._failures.load_state_dict(state.get("failures", {}))
        for worker_id, saved in state.get("stats", {}).items():
            if worker_id in self._stats:
                self._stats[worker_id]["steps"] = saved["steps"]
        if state.get("rng"):
            restore_rng(state["rng"])

    def _trainer_or_none(self) -> pl.Trainer | None:
        module = self.lightning_module
        return getattr(module, "_trainer", None) if module is not None else None

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, mode, description in (
            ("federated", "fedavg", "Federated learning: FedAvg rounds over pointer batches (lightning_fed)"),
            ("fedavg", "fedavg", "Federated learning with FedAvg (lightning_fed)"),
            ("federated_follow", "follow", "Federated learning, the model following each batch (lightning_fed)"),
        ):
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=description, mode=mode)
