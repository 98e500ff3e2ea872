"""The round lifecycle of FedAvg-style training, without Lightning: begin, start a worker, deliver, finalize.

:class:`Rounds` holds what lives across a federation's rounds (the global model, the aggregator, each worker's
optimizer and scheduler state, failures, statistics) and walks one round at a time, as pfl-research's simulation
loop does: for each sampled worker, start it from the global model, let it train (the execution backend does that),
deliver its update at the worker (masked there under secure aggregation); then combine across processes and
finalize. Its state is a plain dict (:meth:`Rounds.state_dict`) and what crosses processes declares how it merges
(``report``/``merge`` of its parts).

Example:
    >>> import torch
    >>> from lightning_fed import VirtualWorker
    >>> from lightning_fed.aggregation import FedAvg
    >>> from lightning_fed.rounds import RoundPlan, Rounds
    >>> weight = torch.nn.Parameter(torch.zeros(2))
    >>> rounds = Rounds(FedAvg())
    >>> a, b = VirtualWorker(id="lc-a"), VirtualWorker(id="lc-b")
    >>> rounds.attach([weight], num_params=1)
    >>> rounds.add_workers({"lc-a": 1, "lc-b": 3})
    >>> rounds.begin(RoundPlan(0, (a, b), (1, 1)), total_steps=2)
    >>> for worker, value in ((a, 1.0), (b, 2.0)):
    ...     rounds.start_worker(worker, optimizers=[])
    ...     with torch.no_grad(): _ = weight.fill_(value)
    ...     rounds.finish_worker(optimizers=[])
    >>> rounds.finalize(), weight.tolist(), rounds.index   # (1 * 1 + 3 * 2) / 4
    (True, [1.75, 1.75], 1)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_fed.aggregation import Aggregator
from lightning_fed.aggregation.base import reads_update_once
from lightning_fed.aggregation.functional import (
    accumulation_dtype,
    all_finite,
    model_delta,
    model_delta_,
    zeros_like_sums,
)
from lightning_fed.exceptions import SealedStateError
from lightning_fed.rounds.byzantine import ByzantineWorkers
from lightning_fed.rounds.failures import ClientFailures, NonFiniteUpdateError
from lightning_fed.rounds.module_state import plain_tensor_attributes, restore_plain_tensor_attributes
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.rounds.releases import audit, update_rule
from lightning_fed.rounds.stats import WorkerLosses, WorkerStats
from lightning_fed.rounds.worker_state import WorkerOptimizerStates, WorkerSchedulerStates, delivery_lr
from lightning_fed.workers.base import BaseWorker

STATE_VERSION = 3  # 3: each worker's state sealed for it (worker_states), a fingerprint


class Rounds:
    """A federation's rounds (see the module docstring).

    Args:
        aggregator: the aggregator chain (secure aggregation and DP wrap the sum).
        failures: simulated and real client failures (default: none simulated, ``min_clients=1``).
        byzantine: Byzantine workers' update transforms, or ``None``.
        reset_optimizer_state: start every worker's optimizer state afresh each round.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        failures: ClientFailures | None = None,
        byzantine: ByzantineWorkers | None = None,
        reset_optimizer_state: bool = False,
    ) -> None:
        self.aggregator = aggregator
        self.failures = failures if failures is not None else ClientFailures()
        self.byzantine = byzantine
        self.optimizer_states = WorkerOptimizerStates(reset_each_round=reset_optimizer_state)
        self.scheduler_states = WorkerSchedulerStates()
        self.stats = WorkerStats()
        self.losses = WorkerLosses()
        self.tensors: list[Tensor] = []  # the module's parameters, then its buffers
        self.num_params = 0
        self.global_: list[Tensor] = []  # the global model of the open round
        self.plan: RoundPlan | None = None
        self.is_open = False
        self.index = 0  # rounds aggregated so far
        self.steps_done = 0  # steps begun in the open round
        self.steps_completed = 0  # steps finished (optimizer step taken or skipped) in the open round
        self.total_steps = 0  # steps the open round has
        self.active: BaseWorker | None = None
        self.local_steps = 0  # the active worker's steps so far
        self.module_is_global = True
        self._module: nn.Module | None = None
        self.attributes: dict[tuple[int, str], Any] = {}  # the module's plain tensor attributes as the round began
        self._delta_buffers: list[Tensor] = []  # each worker's update, where the aggregator allows reuse (update_of)
        self._global_wide: list[Tensor] = []  # the round's global model in accumulation dtype, for update_of
        self._global_wide_stale = True
        self.sync: Callable[[Rounds], None] | None = None  # combines the round across processes
        self.seed = 0  # the federation's seed: drives dropouts
        self.tolerate_failures = False  # a failing worker (an error, a non-finite model) sits the round out
        self.update_rule = update_rule(aggregator)  # what the audit logs say let each update leave its worker

    # -- set-up ---------------------------------------------------------------------------------------------------
    def attach(self, tensors: Sequence[Tensor], num_params: int, module: nn.Module | None = None) -> None:
        """The model tensors the rounds average (parameters first); ``module`` keeps plain tensor attributes."""
        self.tensors = list(tensors)
        self.num_params = num_params
        self._module = module

    def add_workers(self, workers: dict[Hashable, int]) -> None:
        """The federation's workers, with their sample counts."""
        for worker_id, samples in workers.items():
            self.stats.register(worker_id, samples)

    # -- one round ------------------------------------------------------------------------------------------------
    def begin(self, plan: RoundPlan, total_steps: int) -> None:
        """Open round ``plan.round_index``: snapshot the global model, start the aggregator and failures."""
        self.finalize()
        if not self.global_:
            self.global_ = [t.detach().clone() for t in self.tensors]
        else:
            torch._foreach_copy_(self.global_, [t.detach() for t in self.tensors])
        self._global_wide_stale = True
        self.attributes = plain_tensor_attributes(self._module) if self._module is not None else {}
        set_participants = getattr(self.aggregator, "set_participants", None)
        if callable(set_participants):  # secure aggregation exchanges keys with the round's workers up front
            set_participants([w.id for w in plan.workers])
        self.aggregator.begin_round(self.global_)
        self.failures.begin_round(plan.round_index, [w.id for w in plan.workers], list(self.stats.rows), self.seed)
        self.plan = plan
        self.total_steps = total_steps
        self.is_open = True
        self.steps_done = self.steps_completed = 0
        self.module_is_global = True

    def start_worker(self, worker: BaseWorker, optimizers: Sequence[Optimizer], schedulers: Sequence[Any] = ()) -> None:
        """``worker`` starts its local work from the global model, with its own optimizer and scheduler state."""
        if self.active is not None:
            self.finish_worker(optimizers)
        if not self.module_is_global:
            self.reset_module()
        self.optimizer_states.activate(worker.id, optimizers)
        self.scheduler_states.activate(worker.id, schedulers)
        self.active = worker
        self.module_is_global = False
        self.local_steps = 0
        self.aggregator.worker_start(worker.id, self.global_)

    def finish_worker(self, optimizers: Sequence[Optimizer]) -> None:
        """The active worker's local work is over: its update goes into the round; its state goes back to it."""
        worker = self.active
        if worker is None:
            return
        self.deliver(worker, lr=delivery_lr(optimizers))
        self.optimizer_states.deactivate(optimizers)
        self.active = None

    def abandon_worker(self, optimizers: Sequence[Optimizer]) -> None:
        """The active worker's local work is dropped (the fit raised while it trained): it delivers nothing, the
        optimizers hold no state (the worker's stays its own), and the module holds the round's global model again."""
        if self.active is None:
            return
        self.optimizer_states.deactivate(optimizers)
        self.active = None
        self.reset_module()

    def deliver(
        self, worker: BaseWorker, tensors: list[Tensor] | None = None, steps: int | None = None, lr: float = 0.0
    ) -> None:
        """``worker``'s update, computed at the worker through the aggregator's worker-side hooks (masked there under
        secure aggregation), into the round's sum; or the aggregator is told it dropped (failed, dropped out, or
        late under ``straggler_policy="drop"``). A worker whose model is not finite (NaN or inf) sends nothing: with
        ``tolerate_failures`` it is that round's failure, otherwise :class:`NonFiniteUpdateError` names it."""
        local = [t.detach() for t in self.tensors] if tensors is None else tensors
        if not all_finite(local):  # one device sync per delivery
            error = NonFiniteUpdateError(
                f"worker {worker.id!r}'s model is not finite (NaN or inf) at the end of its local training in round "
                f"{self.plan.round_index if self.plan is not None else '?'}: its update is kept from the aggregation. "
                "Lower the learning rate, clip gradients (Trainer(gradient_clip_val=...)) or check that worker's "
                "data; FederatedStrategy(tolerate_failures=True) leaves such a worker out of the round instead."
            )
            if not self.tolerate_failures:
                raise error
            self.failures.record_failure(worker.id, error)
        if not self.failures.finish(worker.id):
            drop = getattr(self.aggregator, "drop", None)
            if callable(drop):
                drop(worker.id)
            return
        with nullcontext() if getattr(worker, "remote", False) else worker.session():  # a site trained at home
            with torch.no_grad():
                update = self.update_of(local)
                num_steps = self.local_steps if steps is None else steps
                update = self.aggregator.worker_update(worker.id, update, num_steps, lr)
                if self.byzantine is not None:
                    update = self.byzantine(worker.id, update, self.global_)
            self.aggregator.accumulate(update, weight=self.stats.samples(worker.id), worker_id=worker.id)
        audit(worker, "update", "aggregate", self.update_rule, (sum(t.numel() for t in update),))

    def update_of(self, local: Sequence[Tensor]) -> list[Tensor]:
        """``local - global`` in accumulation dtype. On the CPU, where the aggregator reads each update once and no
        Byzantine transform sees it (:func:`~lightning_fed.aggregation.base.reads_update_once`), it is written into
        buffers kept from worker to worker within the round (released when it closes), against a float64 copy of the
        round's global model made once a round: the same values bit for bit, without a model-sized float64
        allocation (and its page faults) per worker."""
        if (
            self.byzantine is not None
            or not reads_update_once(self.aggregator)
            or any(t.device.type != "cpu" for t in local)
        ):
            return model_delta(local, self.global_)
        layout = [(t.shape, accumulation_dtype(t.dtype)) for t in local]
        if [(b.shape, b.dtype) for b in self._delta_buffers] != layout:
            self._delta_buffers, self._global_wide = zeros_like_sums(local), zeros_like_sums(self.global_)
            self._global_wide_stale = True
        if self._global_wide_stale:
            torch._foreach_copy_(self._global_wide, self.global_)
            self._global_wide_stale = False
        return model_delta_(self._delta_buffers, local, self._global_wide)

    def is_complete(self, limit: int | float) -> bool:
        """Whether the open round has taken all its steps (or the ``limit`` Lightning allows an epoch)."""
        return self.plan is not None and self.steps_done >= min(self.total_steps, limit)

    def finalize(self, optimizers: Sequence[Optimizer] = (), before_close: Callable[[], None] | None = None) -> bool:
        """Close the open round: the last worker delivers, the processes combine (:attr:`sync`), ``before_close``
        runs (logging), the aggregator finalizes and the module becomes the new global model (on a failed round it
        keeps the last one). Whether a round was open."""
        if not self.is_open:
            return False
        if self.active is not None:
            self.finish_worker(optimizers)
        if self.sync is not None:
            self.sync(self)
        if before_close is not None:
            before_close()
        try:
            self.failures.end_round()  # raises when fewer than min_clients delivered an update
            if self.aggregator.num_contributions > 0:
                new = self.aggregator.finalize(self.global_)
                with torch.no_grad():
                    torch._foreach_copy_(self.global_, new)
                self._global_wide_stale = True
                self.index += 1
        finally:
            self.reset_module()
            self._delta_buffers, self._global_wide = [], []  # no worker's update outlives its round in memory
            self.is_open = False
            self.optimizer_states.end_round()
            if self.optimizer_states.reset_each_round:
                self.scheduler_states.reset()
        return True

    def reset_module(self) -> None:
        """The module back to the global model: its tensors, and the tensors it keeps in plain attributes."""
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, self.global_)
        if self._module is not None:
            restore_plain_tensor_attributes(self._module, self.attributes)
        self.module_is_global = True

    def show_global(self) -> list[Tensor] | None:
        """Put the global model in the module (validation in the middle of a round); returns what to put back."""
        if not self.is_open or self.module_is_global:
            return None
        stash = [t.detach().clone() for t in self.tensors]
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, self.global_)
        return stash

    def put_back(self, stash: list[Tensor] | None) -> None:
        """Undo :meth:`show_global`."""
        if stash is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.tensors, stash)

    def global_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A module ``state_dict(keep_vars=True)`` with the global model in place of a worker's local one."""
        if not self.is_open or self.module_is_global:
            return state
        index = {id(t): i for i, t in enumerate(self.tensors)}
        return {k: self.global_[index[id(v)]] if id(v) in index else v for k, v in state.items()}

    # -- the middle of a round ------------------------------------------------------------------------------------
    def open_round_state(self) -> dict[str, Any]:
        """The server's part of what continues the open round exactly after a resume: the steps done, the global
        model of its start, the aggregator's and the failures' round state, the active worker. The active worker's
        local model and steps are its own (:meth:`worker_states` with ``local``)."""
        assert self.plan is not None
        return {
            "round": self.plan.round_index,
            "steps": self.steps_completed,
            "total": self.total_steps,
            "global": [t.detach().clone() for t in self.global_],
            "active": None if self.active is None else self.active.id,
            "aggregator": self.aggregator.round_state_dict(),
            "failures": self.failures.round_state(),
            "losses": self.losses.report(),
        }

    def resume(
        self,
        plan: RoundPlan,
        state: dict[str, Any],
        optimizers: Sequence[Optimizer],
        schedulers: Sequence[Any] = (),
    ) -> None:
        """Continue round ``plan`` from :meth:`open_round_state`, as if it had never stopped."""
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, state["global"])
        self.begin(plan, int(state["total"]))
        self.aggregator.load_round_state_dict(state["aggregator"])
        self.failures.load_round_state(state["failures"])
        self.losses.merge([state["losses"]])
        self.steps_done = self.steps_completed = int(state["steps"])
        if state["active"] is not None:
            (worker,) = [w for w in plan.workers if w.id == state["active"]]
            self.start_worker(worker, optimizers, schedulers)
            local = state.get("local")  # the active worker's own, unsealed from its state
            if local is None:
                raise SealedStateError(
                    f"the checkpoint's open round {plan.round_index} was stopped while worker {worker.id!r} trained, "
                    "but that worker's sealed local model was not opened: resume with that worker's key file."
                )
            with torch.no_grad():
                torch._foreach_copy_(self.tensors, local["model"])
            self.local_steps = int(local["steps"])

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The server's part of a checkpoint: round counters, the server-side aggregator state, failures, statistics.
        Nothing in it is a worker's own (that is :meth:`worker_states`)."""
        return {
            "version": STATE_VERSION,
            "round_index": self.index,
            "scheduler_states": self.scheduler_states.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "failures": self.failures.state_dict(),
            "stats": self.stats.summary(self.failures),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state.get("round_index", 0))
        self.optimizer_states.clear()
        self.scheduler_states.load_state_dict(state.get("scheduler_states", {}))
        self.aggregator.load_state_dict(state.get("aggregator", {}))
        self.failures.load_state_dict(state.get("failures", {}))
        self.stats.load_summary(state.get("stats", {}))

    def worker_states(
        self, optimizers: Sequence[Optimizer], local: Sequence[Tensor] | None = None
    ) -> dict[Hashable, dict[str, Any]]:
        """Each worker's own state, in the clear (to be sealed for it): its optimizer state, its schedule, the
        aggregator's state for it (SCAFFOLD's ``c_i``) and, for the worker training in the open round, its local
        model (``local``, default the module's tensors) and steps."""
        out: dict[Hashable, dict[str, Any]] = {}
        for worker_id in self.stats.rows:
            state = {
                "optimizer": self.optimizer_states.export(worker_id, optimizers),
                "scheduler": self.scheduler_states.export(worker_id),
                "aggregator": self.aggregator.worker_state_dict(worker_id),
            }
            if self.is_open and self.active is not None and self.active.id == worker_id:
                tensors = self.tensors if local is None else local
                state["local"] = {"model": [t.detach().clone() for t in tensors], "steps": self.local_steps}
            if any(v for v in state.values()):
                out[worker_id] = state
        return out

    def load_worker_state(self, worker_id: Hashable, state: dict[str, Any], optimizers: Sequence[Optimizer]) -> None:
        """Undo :meth:`worker_states` for one worker (its ``local`` part is the open round's: see :meth:`resume`)."""
        if state.get("optimizer") is not None:
            self.optimizer_states.load(worker_id, state["optimizer"], optimizers)
        if state.get("scheduler") is not None:
            self.scheduler_states.load(worker_id, state["scheduler"])
        if state.get("aggregator"):
            self.aggregator.load_worker_state_dict(worker_id, state["aggregator"])

    # -- several processes ----------------------------------------------------------------------------------------
    def report(self, mine: Sequence[Hashable]) -> dict[str, Any]:
        """What this process knows of the round, for :meth:`merge` in every process."""
        return {
            "failures": self.failures.report(mine),
            "stats": self.stats.report(mine),
            "losses": self.losses.report(),
        }

    def merge(self, reports: Sequence[dict[str, Any]], order: Sequence[Hashable]) -> None:
        self.failures.merge([r["failures"] for r in reports], order)
        self.stats.merge([r["stats"] for r in reports])
        self.losses.merge([r["losses"] for r in reports])
