"""Vectorized workers: a round's workers train together, as one batched computation over stacked model copies.

With ``FederatedStrategy(vectorize=True)`` each participating worker's parameters become one slice of a stacked
tensor with a leading worker dimension. A vectorized step takes the next batch of every worker at once and runs
the user's unchanged ``training_step`` under ``torch.func.functional_call`` + ``torch.vmap`` and one backward of
the summed losses (the workers share no parameter, so each worker's slice of the stacked gradient is its own), so
K workers cost one dispatch of each operation instead of K. The user's own
optimizer class is re-created over the stacked tensors with the same hyper-parameters: SGD, momentum, Adam and
their relatives update elementwise, so every worker's slice moves exactly as it would alone.

Exactness with the sequential path:

* **Unequal shards**: a worker with no batch left at a step is masked (its parameter and optimizer-state slices
  are restored after the step), so it does not move; batches of different sizes at one step (a shard's last
  batch) are vmapped in groups of equal shape.
* **Optimizer state** kept across rounds: workers whose states differ in kind or in their scalar ``step`` cannot
  share one stacked optimizer (its ``step`` is one number), so the round's workers are split into *cohorts* of
  equal state signature, trained one cohort after another; with equal shards (or fresh state) there is one.
* **Randomness**: ``vmap(randomness="different")``: dropout draws an independent mask for each worker.
* **Not batchable**: when an operation of ``training_step`` cannot run under ``vmap`` (``.item()``, data-dependent
  control flow, in-place updates of unbatched state such as a torchmetrics metric), the first step says so in one
  warning and the run goes on in *loop* mode: each worker's forward and backward run one after another (plain
  autograd, ``self.log`` as usual) and only the optimizer step stays stacked. Never a silent wrong answer.
* **Refused** with a :class:`~lightning_fed.exceptions.FederatedConfigError` naming the cause: BatchNorm (running
  statistics per worker are not kept), manual optimization, several optimizers, gradient accumulation, mixed
  precision, step-interval LR schedulers, overridden backward/optimizer hooks, and aggregators that edit gradients
  at the workers (FedProx, SCAFFOLD, sample-level DP).

Vectorized training is a simulation technique: the round's batches meet in one computation in this process.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(
    ...     TensorDataset(torch.randn(64, 4), torch.arange(64) % 2), workers=8, batch_size=4
    ... )
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(vectorize=True), max_epochs=2, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> trainer.strategy.round_index, trainer.global_step  # 2 rounds of 2 vectorized steps, fused into 1 Lightning step
    (2, 2)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.optim import Optimizer

from lightning_fed.backends.batched_logs import batched_logs
from lightning_fed.backends.vectorized.cohorts import Cohort, _elementwise
from lightning_fed.backends.vectorized.functional import (
    LogCall,
    LogRecorder,
    TrainingStepCall,
    clip_per_worker,
    guarded_metrics,
    is_dense,
    is_vmap_error,
    leading_size,
    like_layout,
    loss_of,
    metric_modules,
    patched_log,
    shapes,
    sized_log,
    stack_batches,
    tied_names,
)
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import warn
from lightning_fed.rounds.worker_state import optimizer_params
from lightning_fed.workers.base import BaseWorker


def recreate_optimizer(optimizer: Optimizer, params: Sequence[Tensor]) -> Optimizer:
    """A fresh optimizer of ``optimizer``'s class and hyper-parameters over ``params`` (one for each of its
    parameters, in its order); the state is not copied."""
    groups, position = [], 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append({**{key: v for key, v in group.items() if key != "params"},
                       "params": list(params[position:position + n])})  # fmt: skip
        position += n
    try:
        return type(optimizer)(groups)
    except TypeError:
        try:
            return type(optimizer)(groups, **optimizer.defaults)
        except TypeError as err:
            raise FederatedConfigError(
                f"`vectorize=True` could not re-create your optimizer {type(optimizer).__name__} over the "
                f"stacked parameters ({err}): pass vectorize=False."
            ) from err


def _one_vector(losses: list[Tensor]) -> Tensor:
    """The workers' losses as one vector, in the order given (empty for a step without active workers)."""
    if not losses:
        return torch.zeros(0)
    return losses[0].reshape(-1) if len(losses) == 1 else torch.cat([loss.reshape(-1) for loss in losses])


# -- the stacked workers of one cohort --------------------------------------------------------------------------------
class VectorizedWorkers:
    """Trains the cohorts of a run: stacked parameters, the user's optimizer re-created over them, masked steps.

    Args:
        module: the LightningModule (its parameters hold the global model; they are never changed here).
        optimizer: the user's optimizer (its class and hyper-parameters are copied, its state is not used).
        states: the strategy's :class:`~lightning_fed.rounds.worker_state.WorkerOptimizerStates`.
        clip_val / clip_algorithm: Lightning's ``gradient_clip_val`` / ``gradient_clip_algorithm``, applied to
            each worker's gradients separately.
    """

    def __init__(
        self,
        module: Any,
        optimizer: Optimizer,
        states: Any,
        clip_val: float | None = None,
        clip_algorithm: str | None = None,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.states = states
        self.clip_val = clip_val
        self.clip_algorithm = clip_algorithm or "norm"
        self.use_vmap = True
        self.dry_run = False  # a measurement (vectorize="auto"): nothing is logged, no fallback to loop mode
        self._call = TrainingStepCall(module)
        named = {id(p): f"module.{n}" for n, p in module.named_parameters()}  # names under TrainingStepCall
        self.user_params = optimizer_params(optimizer)
        if any(id(p) not in named for p in self.user_params):
            raise FederatedConfigError(
                "`vectorize=True`: the optimizer holds tensors that are not parameters of the LightningModule; "
                "pass vectorize=False."
            )
        self._names = [named[id(p)] for p in self.user_params]  # of the stacked tensors, in their order
        self._position = {id(p): i for i, p in enumerate(self.user_params)}
        self.frozen = {named[id(p)]: p for p in module.parameters() if id(p) not in self._position}
        self._tied = tied_names(self._call, self._names)  # found once: functional_call need not untie every step
        self._metrics: list[tuple[str, nn.Module]] = []
        self.cohort: Cohort | None = None
        self.stacked: list[Tensor] = []
        self.stacked_optimizer: Optimizer | None = None
        self.counts: list[int] = []
        self._start_step: float | None = None
        self._layout_matched = False
        self._active: list[bool] = []

    # -- cohort lifecycle --------------------------------------------------------------------------------------------
    def start(self, cohort: Cohort) -> None:
        """Stack the global model once per worker and the workers' optimizer states; build the stacked optimizer."""
        k = len(cohort.workers)
        with torch.no_grad():
            stacked = [p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())) for p in self.user_params]
        self.stacked = [t.requires_grad_(True) for t in stacked]  # leaves: autograd fills each worker's slice
        self.stacked_optimizer = recreate_optimizer(self.optimizer, self.stacked)
        self._load_states(cohort)
        self.cohort = cohort
        self.counts = [0] * k
        self._layout_matched = False
        self._metrics = metric_modules(self.module)  # once a cohort, not at every step

    def _load_states(self, cohort: Cohort) -> None:
        saved = [self.states.get(w.id) for w in cohort.workers]
        first = saved[0]
        self._start_step = None
        if not first or not first[0]:
            return  # fresh: the stacked optimizer creates its state at the first step, as each worker's would
        assert self.stacked_optimizer is not None
        for i, param in enumerate(self.user_params):
            entries = first[0].get(param)
            if not entries:
                continue
            stacked_entries: dict[str, Any] = {}
            for key, value in entries.items():
                if _elementwise(value, param.shape):
                    stacked_entries[key] = torch.stack([s[0][param][key] for s in saved])
                else:
                    stacked_entries[key] = value.clone() if isinstance(value, Tensor) else value
                    if key == "step":
                        self._start_step = float(value)
            self.stacked_optimizer.state[self.stacked[i]] = stacked_entries

    def finish(self) -> list[tuple[BaseWorker, list[Tensor], int]]:
        """Each worker's final parameters (in the module's order; views into the stacks) and step count; saves
        their optimizer states."""
        assert self.cohort is not None and self.stacked_optimizer is not None
        out = []
        for k, worker in enumerate(self.cohort.workers):
            if self.counts[k]:
                self._save_state(worker.id, k)
            out.append((worker, [self._worker_param(p, k).detach() for p in self.module.parameters()], self.counts[k]))
        self.cohort = None
        self.stacked_optimizer = None
        return out

    def _worker_param(self, param: Tensor, k: int) -> Tensor:
        position = self._position.get(id(param))
        return param.detach() if position is None else self.stacked[position][k]  # frozen: the global value

    def _save_state(self, worker_id: Hashable, k: int) -> None:
        assert self.stacked_optimizer is not None
        state: defaultdict = defaultdict(dict)
        for param, stacked in zip(self.user_params, self.stacked):
            entries = self.stacked_optimizer.state.get(stacked)
            if not entries:
                continue
            mine: dict[str, Any] = {}
            for key, value in entries.items():
                if _elementwise(value, stacked.shape):
                    mine[key] = value[k].clone()
                elif key == "step":
                    steps = (self._start_step or 0.0) + self.counts[k]
                    mine[key] = torch.tensor(steps, dtype=value.dtype) if isinstance(value, Tensor) else steps
                else:
                    mine[key] = value.clone() if isinstance(value, Tensor) else value
            state[param] = mine
        self.states.put(worker_id, [state])

    # -- one vectorized step ----------------------------------------------------------------------------------------
    def compute(self, batches: Sequence[Any], active: Sequence[bool], batch_idx: int) -> tuple[list[int], Tensor]:
        """Gradients of every active worker's ``training_step`` loss; returns the workers' positions and their losses
        (detached, one vector: ``losses[i]`` is worker ``positions[i]``'s)."""
        assert self.cohort is not None
        self._active = list(active)
        positions = [k for k, a in enumerate(active) if a]
        result: tuple[list[int], Tensor] | None = None
        if self.use_vmap:
            try:
                result = self._compute_vmap(batches, positions, batch_idx)
            except Exception as err:
                if not is_vmap_error(err) or self.dry_run:
                    raise
                warn(
                    f"FederatedStrategy(vectorize=True): your training_step cannot run under torch.vmap ({err}). "
                    "Going on in loop mode: each worker's forward and backward run one after another (exact, slower)."
                )
                self.use_vmap = False
        if not self.use_vmap:
            result = self._compute_loop(batches, positions, batch_idx)
        for t in self.stacked:  # a parameter the loss does not reach gets a zero gradient, as in the sequential path
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        if not self._layout_matched:
            self._match_grad_layout()
        assert result is not None
        return result

    def _match_grad_layout(self) -> None:
        """Once a cohort: store each stacked parameter (and its optimizer state) in the memory layout of the gradient
        autograd gives it (vmapped ``linear`` yields transposed weight gradients): the optimizer's elementwise updates
        then run over contiguous memory instead of strided. Values are unchanged; the layout is all that moves."""
        assert self.stacked_optimizer is not None
        self._layout_matched = True
        with torch.no_grad():
            for t in self.stacked:
                g = t.grad
                if g is None or g.stride() == t.stride() or not is_dense(g):
                    continue
                t.data = like_layout(t, g)
                for key, value in list(self.stacked_optimizer.state.get(t, {}).items()):
                    if _elementwise(value, t.shape):
                        self.stacked_optimizer.state[t][key] = like_layout(value, g)

    def _swapped(self, worker_params: Sequence[Tensor]) -> dict[str, Tensor]:
        """``functional_call``'s tensors for one step: each trained parameter under all its (tied) names."""
        return {alias: t for name, t in zip(self._names, worker_params) for alias in self._tied[name]}

    def _compute_vmap(self, batches: Sequence[Any], positions: list[int], batch_idx: int) -> tuple[list[int], Tensor]:
        """One vmapped forward per group of equal batch shapes; one gradient of the sum of the workers' losses (the
        workers share no parameter, so each slice of the stacked gradient is that worker's own gradient)."""
        by_shape: dict[tuple, list[int]] = {}
        for k in positions:
            by_shape.setdefault(shapes(batches[k]), []).append(k)
        k_workers = len(self.counts)
        order: list[int] = []
        group_losses: list[Tensor] = []
        total: Tensor | None = None
        pending_logs = []
        for group in by_shape.values():
            if len(group) == k_workers:
                params = self.stacked
            else:
                index = torch.tensor(group, device=self.stacked[0].device)
                params = [t.index_select(0, index) for t in self.stacked]
            recorder = LogRecorder()

            def forward(worker_params: list[Tensor], worker_batch: Any, recorder: LogRecorder = recorder) -> Any:
                recorder.calls.clear()
                recorder.values.clear()
                swapped = self._swapped(worker_params)
                loss = loss_of(functional_call(self._call, swapped, (worker_batch, batch_idx), tie_weights=False))
                return loss, tuple(recorder.values)

            with patched_log(self.module, recorder), guarded_metrics(self.module, metrics=self._metrics):
                loss, logged = vmap(forward, randomness="different")(params, stack_batches([batches[k] for k in group]))
            if loss.numel() != len(group):
                raise FederatedConfigError(
                    f"`vectorize=True`: training_step returned a loss of shape {tuple(loss.shape[1:])} per worker; "
                    "return a scalar loss (one number a batch, as loss.backward() needs)."
                )
            total = loss.sum() if total is None else total + loss.sum()
            order += group
            group_losses.append(loss.detach().reshape(len(group)))
            if recorder.calls:
                for j, k in enumerate(group):
                    pending_logs.extend((call, values[j], batches[k]) for call, values in zip(recorder.calls, logged))
        if total is not None:  # autograd.grad, not backward: no accumulation copy into the parameters' layout
            grads = torch.autograd.grad(total, self.stacked, allow_unused=True)
            for t, g in zip(self.stacked, grads):
                t.grad = g
        if not self.dry_run:
            self._log_merged(pending_logs)  # after the gradient: a bad log call cannot leave half a step behind
        return order, _one_vector(group_losses)

    def _compute_loop(self, batches: Sequence[Any], positions: list[int], batch_idx: int) -> tuple[list[int], Tensor]:
        for t in self.stacked:
            t.grad = torch.zeros_like(t)
        losses = []
        for k in positions:
            leaves = [t[k].detach().requires_grad_(True) for t in self.stacked]
            swapped = {**self.frozen, **dict(zip(self._names, leaves))}
            with sized_log(self.module, leading_size(batches[k])):
                output = functional_call(self._call, swapped, (batches[k], batch_idx))
            loss = loss_of(output)
            for stacked, grad in zip(self.stacked, torch.autograd.grad(loss, leaves, allow_unused=True)):
                if grad is not None:
                    stacked.grad[k].copy_(grad)
            losses.append(loss.detach().reshape(1))
        return positions, _one_vector(losses)

    def _log_merged(self, pending: list[tuple[LogCall, Tensor, Any]]) -> None:
        """Log the step's values: each worker's calls as its sequential step makes them (weighed by its own batch),
        handed to Lightning as one call per name where one call carries them exactly (a mean, max, min or sum:
        :mod:`~lightning_fed.backends.batched_logs`), else one call per worker. The epoch value is the sequential
        path's; inside a fused chunk, the chunk's own batcher merges these calls again, once a Lightning step."""
        with batched_logs(self.module):
            for call, value, batch in pending:
                kwargs = dict(call.kwargs)
                if kwargs.get("batch_size") is None:
                    kwargs["batch_size"] = leading_size(batch)
                self.module.log(call.name, value, **kwargs)

    def step(self) -> None:
        """Clip each worker's gradients, step the stacked optimizer; masked (inactive) workers do not move."""
        assert self.stacked_optimizer is not None
        grads = [t.grad for t in self.stacked]
        if any(g is None for g in grads):
            raise RuntimeError("VectorizedWorkers.step() before compute(): no gradients")
        if self.clip_val is not None and self.clip_val > 0:
            clip_per_worker(grads, float(self.clip_val), self.clip_algorithm)
        for user_group, group in zip(self.optimizer.param_groups, self.stacked_optimizer.param_groups):
            for key, value in user_group.items():  # LR schedulers change the user's optimizer: follow them
                if key != "params":
                    group[key] = value
        inactive = [k for k, a in enumerate(self._active) if not a]
        saved = self._save_slices(inactive) if inactive else None
        self.stacked_optimizer.step()
        if saved is not None:
            self._restore_slices(inactive, saved)
        for k, a in enumerate(self._active):
            self.counts[k] += int(a)
        for stacked in self.stacked:
            stacked.grad = None

    def _per_worker_tensors(self) -> list[Tensor]:
        assert self.stacked_optimizer is not None
        out = list(self.stacked)
        for stacked in self.stacked:
            out += [v for v in self.stacked_optimizer.state.get(stacked, {}).values() if _elementwise(v, stacked.shape)]
        return out

    def _save_slices(self, inactive: list[int]) -> list[Tensor]:
        index = torch.tensor(inactive, device=self.stacked[0].device)
        with torch.no_grad():
            return [t.index_select(0, index) for t in self._per_worker_tensors()]

    def _restore_slices(self, inactive: list[int], saved: list[Tensor]) -> None:
        # parameters come first and state tensors keep their order; state created by this very step has no saved
        # slice (a worker masked since the start never saves its state: its step count stays 0)
        index = torch.tensor(inactive, device=self.stacked[0].device)
        with torch.no_grad():
            for t, v in zip(self._per_worker_tensors(), saved):
                t.index_copy_(0, index, v)
