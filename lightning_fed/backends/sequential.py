"""FedAvg rounds, one worker after another: the default backend.

The round, as one visible loop (each step here is one Lightning training step, so callbacks, logging, gradient
clipping, accumulation and schedulers work as in any Lightning run)::

    for worker in plan.workers:                       # batch_start: the first batch of a worker starts it
        rounds.start_worker(worker)                   #   from the global model, with its own optimizer state
        for batch in worker's local batches:
            with worker.session(batch) as real:       # optimizer_step: the one door into the worker
                training_step(real); backward(); step()
        rounds.deliver(worker)                        #   its update, computed (and masked) at the worker
    rounds.finalize()                                 # the last step of the round: aggregate

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(TensorDataset(torch.randn(8, 4), torch.arange(8) % 2), workers=2,
    ...                                          batch_size=4)
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(local_loop="steps"), max_epochs=2, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> type(trainer.strategy.backend).__name__, trainer.strategy.round_index
    ('SequentialBackend', 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_fed.backends.base import Backend, LightningCalls, with_batch, worker_of
from lightning_fed.backends.round_loader import RoundLoader
from lightning_fed.backends.threads import ThreadGovernor
from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import info, warn
from lightning_fed.privacy.dp import DPSGDAggregator, find_dp
from lightning_fed.rounds.lifecycle import Rounds
from lightning_fed.rounds.planning import RoundPlan, RoundPlanner
from lightning_fed.rounds.releases import check_update_release
from lightning_fed.rounds.worker_state import StepSchedulers


class SequentialBackend(Backend):
    """FedAvg rounds, worker after worker (see the module docstring).

    Args:
        calls: what the backend calls in Lightning.
        rounds: the federation's round lifecycle.
        planning: the :class:`~lightning_fed.rounds.RoundPlanner` arguments (clients per round, local work, seed).
        tolerate_failures: leave a worker whose ``training_step`` raises out of the round instead of stopping.
        step_schedulers: the step-interval LR schedulers (kept per worker, stepping with the worker's own batches).
        threads: torch's thread count, re-checked at each round's start (:mod:`~lightning_fed.backends.threads`).
    """

    name = "sequential"

    def __init__(
        self,
        calls: LightningCalls,
        rounds: Rounds,
        planning: dict[str, Any],
        tolerate_failures: bool = False,
        step_schedulers: StepSchedulers | None = None,
        threads: ThreadGovernor | None = None,
    ) -> None:
        super().__init__(calls, rounds)
        self.planning = planning
        self.tolerate_failures = tolerate_failures
        self.step_schedulers = step_schedulers or StepSchedulers()
        self.threads = threads
        self.dp = find_dp(rounds.aggregator)
        self.planner: RoundPlanner | None = None
        self.batch: Any = None  # the batch of the current step
        self.target: tuple[Any, Any] | None = None  # its (refs, worker)
        self.skip = False  # the current batch's worker dropped out, failed, is past its deadline or its budget
        self.stepping = False  # inside the worker's optimizer step (the backward that precedes a step)
        self._stash: list[torch.Tensor] | None = None
        self.resume_state: dict[str, Any] | None = None  # a checkpoint's open round, continued at its next batch

    def rebuilt_as(self, cls: type[SequentialBackend]) -> SequentialBackend:
        """A backend of ``cls`` (fused, vectorized, remote) over this one's calls, rounds, planning and options."""
        return cls(self.calls, self.rounds, self.planning, tolerate_failures=self.tolerate_failures,
                   step_schedulers=self.step_schedulers, threads=self.threads)  # fmt: skip

    # -- the federation's data ------------------------------------------------------------------------------------
    def planner_args(self, loader: FederatedDataLoader) -> dict[str, Any]:
        """The planner's arguments; without a seed of its own the strategy takes the loader's (one seed per run)."""
        seed = self.planning.get("seed")
        return {**self.planning, "seed": loader.seed if seed is None else seed}

    def make_planner(self, loader: FederatedDataLoader) -> RoundPlanner:
        return RoundPlanner(loader, **self.planner_args(loader))

    def process_dataloader(self, loader: FederatedDataLoader) -> Any:
        first = self.planner is None
        self.loader = loader
        self.planner = self.make_planner(loader)
        if not first:  # Lightning rebuilt the loader (a new round length, a new batch size)
            self._attach_dp(loader, first=False)
            return RoundLoader(self)
        rounds = self.rounds
        rounds.seed = self.planner.seed
        worker_ids = [w.id for w in loader.workers]
        rounds.add_workers({w.id: len(loader.federated_dataset[w.id]) for w in loader.workers})
        check_update_release(loader.workers, rounds.aggregator)
        rounds.aggregator.setup(worker_ids)
        rounds.aggregator.setup_model(rounds.num_params)
        rounds.aggregator.check_num_clients(self.planner.clients_per_round)
        rounds.failures.check_setup(self.planner.clients_per_round)
        if rounds.byzantine is not None:
            rounds.byzantine.check_workers(worker_ids)
        self._attach_dp(loader, first=True)
        trainer = self.calls.trainer()
        if self.lengths_vary() and trainer is not None and not trainer.reload_dataloaders_every_n_epochs:
            trainer.reload_dataloaders_every_n_epochs = 1  # Lightning re-reads each round's length
            info("Rounds differ in length: Lightning rebuilds the train loader every round to read its length.")
        return RoundLoader(self)

    def lengths_vary(self) -> bool:
        """Whether rounds can differ in Lightning steps (client sampling over unequal amounts of work)."""
        return self.planner is not None and self.planner.lengths_vary

    def _attach_dp(self, loader: FederatedDataLoader, first: bool) -> None:
        dp, planner = self.dp, self.planner
        if not isinstance(dp, DPSGDAggregator) or planner is None:
            return
        if first:  # sample-level DP-SGD: per-sample gradients, Poisson batches
            plan = planner.plan(0)
            steps = dict(zip((w.id for w in plan.workers), plan.steps))
            steps_per_round = {w.id: steps.get(w.id, planner.steps_for(w)) for w in loader.workers}
            dp.attach_federated(self.calls.module(), loader, steps_per_round=steps_per_round)
        planner.batch_source = lambda worker, epoch: dp.worker_batches(loader, worker, epoch)
        planner.position_source = lambda worker, epoch: dp.worker_positions(loader, worker, epoch)

    # -- what the round loader asks ---------------------------------------------------------------------------------
    def upcoming_plan(self) -> RoundPlan:
        """The plan of the round Lightning's current (or coming) epoch runs."""
        if self.planner is None:
            raise FederatedConfigError("no federated train dataloader yet: use a FederatedDataModule.")
        return self.planner.plan(current_epoch(self.calls.trainer()))

    def round_length(self, plan: RoundPlan) -> int:
        return plan.total_steps

    def round_batches(self, plan: RoundPlan) -> Iterator[Any]:
        assert self.planner is not None
        resume = self.resume_state
        skip = int(resume["steps"]) if resume is not None and resume["round"] == plan.round_index else 0
        for position, (_worker, batch) in enumerate(self.planner.batches(plan)):
            if position >= skip:  # a resumed round goes on where its checkpoint was taken
                yield batch

    # -- the round ------------------------------------------------------------------------------------------------
    def begin_round(self, plan: RoundPlan) -> None:
        if self.threads is not None:  # every backend's rounds begin here: the thread count follows the load
            self.threads.round_start(plan.round_index)
        resume, self.resume_state = self.resume_state, None
        accumulate = self.calls.trainer().accumulate_grad_batches
        failures = self.rounds.failures
        steps = plan.steps + tuple(failures.effective_steps(plan.steps))  # a deadline cuts a worker's steps
        if accumulate > 1 and any(s % accumulate for s in steps):
            raise FederatedConfigError(
                f"`accumulate_grad_batches={accumulate}` does not divide the batches each worker trains per round "
                f"({dict(zip((w.id for w in plan.workers), plan.steps))}, deadline_steps={failures.deadline_steps}): "
                "gradients would mix workers. Choose local_steps, deadline_steps or a batch size that makes them "
                "divisible."
            )
        if resume is not None and resume["round"] == plan.round_index:
            self.rounds.resume(plan, resume, self.calls.optimizers(), self.step_schedulers)
        else:
            self.rounds.begin(plan, self.round_length(plan))

    def open_step(self, batch: Any) -> None:
        """A Lightning step begins with ``batch``: the round opens if this is its first step, and the step counts."""
        if not self.rounds.is_open:
            self.begin_round(self.upcoming_plan())
        self.batch = batch
        self.rounds.steps_done += 1

    def batch_start(self, batch: Any) -> Any:
        rounds = self.rounds
        self.target = worker_of(batch)  # read once a step: the session opens from it
        worker = self.target[1]
        self.open_step(batch)
        if worker is not rounds.active:
            rounds.start_worker(worker, self.calls.optimizers(), self.step_schedulers)
        if self.step_schedulers:  # they step after this batch where its worker's own count meets their frequency
            self.step_schedulers.decide(rounds.scheduler_states.count_batch())
        self.skip = rounds.failures.skip_batch(worker.id)
        if self.budget_spent(worker.id):
            self.skip = True
        if not self.skip:
            rounds.stats.step(worker.id)
        self.calls.progress("Round", worker)
        return batch

    def budget_spent(self, worker_id: Any) -> bool:
        """Whether sample-level DP-SGD spent ``worker_id``'s privacy budget: its batches are drawn, not trained on."""
        return isinstance(self.dp, DPSGDAggregator) and not self.dp.can_step(worker_id)

    def finalize_round(self) -> None:
        """Close the open round (its last worker delivers, the aggregate becomes the global model)."""
        self.skip = False
        self.rounds.finalize(self.calls.optimizers(), before_close=self.flush_losses)

    # -- the step, at the worker ----------------------------------------------------------------------------------
    def training_step(self, args: tuple, kwargs: dict) -> Any:
        if self.skip:  # Lightning skips backward and the step for a ``None`` output
            return self.calls.skipped_output()
        if self.session is None:  # gradient accumulation: Lightning runs the closure without an optimizer step
            with self.at_worker(args[0] if args else kwargs["batch"]):
                return self.training_step(args, kwargs)
        session = self.session
        local_index = self.rounds.failures.batches_of(session.worker.id) - 1  # as every path numbers a worker's batches
        real_args, real_kwargs = with_batch(session.real, args, kwargs, local_index)
        try:
            output = self.calls.training_step(*real_args, **real_kwargs)
        except Exception as err:
            if not self.tolerate_failures:
                raise
            self.rounds.failures.record_failure(session.worker.id, err)  # it sits the rest of the round out
            self.rounds.reset_module()  # the module holds the round's global model again, not a partial local one
            self.skip = True
            self.calls.module().zero_grad(set_to_none=True)  # the optimizer step that follows changes nothing
            return self.calls.skipped_output()
        self.record(session.worker, output, session.real)
        return output

    def post_backward(self) -> None:
        rounds = self.rounds
        if rounds.active is None or not self.stepping:  # once per optimizer step, not per accumulated backward
            return
        params = rounds.tensors[: rounds.num_params]
        scaler = getattr(self.calls.precision(), "scaler", None)  # fp16 AMP: the gradients are still scaled here
        grads = [p.grad for p in params if p.grad is not None] if scaler is not None else []
        scale = scaler.get_scale() if grads else 1.0
        if grads:
            torch._foreach_div_(grads, scale)  # a power of two: exact
        rounds.aggregator.adjust_gradients(rounds.active.id, params, rounds.global_[: rounds.num_params])
        if grads:
            torch._foreach_mul_(grads, scale)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        try:
            if self.skip:  # Lightning needs its closure run: training_step returns None, no backward, no step
                out = closure()
            else:
                with self.at_worker(self.batch, self.target):
                    self.stepping = True
                    try:
                        out = self.calls.optimizer_step(optimizer, closure, model, **kwargs)
                    finally:
                        self.stepping = False
                if not self.skip:  # the worker did not fail during this step
                    self.rounds.local_steps += 1
        finally:
            self.batch = None  # the batch's objects are freed at the worker as soon as Lightning drops it too
        self.end_step()
        return out

    def end_step(self) -> None:
        self.rounds.steps_completed += 1
        if self.rounds.is_complete(self.calls.trainer().num_training_batches):
            self.finalize_round()

    # -- evaluation and the end of fit ----------------------------------------------------------------------------
    def open_round_state(self) -> dict[str, Any] | None:
        """The open round's state for a checkpoint that continues it exactly (``None`` where this backend cannot)."""
        if type(self) is not SequentialBackend or not self.rounds.aggregator.resumable_mid_round:
            return None
        return self.rounds.open_round_state()

    def local_model(self) -> list[torch.Tensor] | None:
        """The active worker's local model where the module does not hold it (mid-round validation shows the global
        model); ``None``: the module's tensors are the local model."""
        return self._stash

    def before_checkpoint(self) -> None:
        rounds = self.rounds
        if rounds.is_open and rounds.is_complete(self.calls.trainer().num_training_batches):
            self.finalize_round()

    def before_evaluation(self) -> None:
        rounds = self.rounds
        self.before_checkpoint()
        self._stash = rounds.show_global()  # mid-round validation: evaluate the global model

    def after_evaluation(self) -> None:
        self.rounds.put_back(self._stash)
        self._stash = None

    def end_epoch(self) -> None:
        """A round still open here was cut short (``max_steps``, a callback's ``should_stop``, ``max_time``): it is
        aggregated now, so that the epoch-end hooks, checkpoints and the fitted module all see the same model."""
        self.finalize_round()

    def end_fit(self) -> None:
        self.batch = None
        self.finalize_round()
        self.flush_losses()

    def teardown(self) -> None:
        if self.rounds.active is not None:  # a fit that raised while a worker trained: nothing of its local work stays
            self.rounds.abandon_worker(self.calls.optimizers())
            self.calls.module().zero_grad(set_to_none=True)
        self.step_schedulers.restore()  # the frequencies as given (also after a fit that raised)
        if isinstance(self.dp, DPSGDAggregator):
            self.dp.detach()

    def describe(self) -> str:
        planning = self.planning
        cpr = planning.get("clients_per_round")
        fraction = planning.get("client_fraction")
        clients = f"client_fraction={fraction}" if fraction is not None else f"clients_per_round={cpr or 'all'}"
        rounds = self.rounds
        return (
            f"FedAvg rounds ({self.name}) with {rounds.aggregator!r}, local_epochs={planning['local_epochs']}, "
            f"local_steps={planning['local_steps']}, {clients}, {rounds.failures.describe()}"
            + (f", {rounds.byzantine!r}" if rounds.byzantine is not None else "")
            + (f", {self.threads.describe()}" if self.threads is not None else "")
        )


def current_epoch(trainer: Any) -> int:
    """The epoch Lightning runs or is about to run (what it passes to samplers' ``set_epoch``): the round."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_progress.current.processed)


def warn_limits(limit: Any) -> None:
    """One warning when Lightning's ``limit_train_batches`` (or ``fast_dev_run``) cuts rounds."""
    if limit is not None:
        warn(
            f"`limit_train_batches={limit!r}` (or fast_dev_run) trains that share of every sampled worker's local "
            "work in each round (at least one batch each), not the first batches of the round. To set each worker's "
            "local work, use FederatedStrategy(local_steps=...)."
        )
