"""Per-worker optimizer state (momentum buffers, Adam moments) kept across rounds, moved by reference.

An optimizer's ``state`` is a dict keyed by parameter object. Each worker owns one such dict per optimizer; when a
worker starts training, its dicts become the optimizers' ``state`` (no tensor is copied), and when it stops they go
back to the worker. For checkpoints a worker's dicts are exported with parameter *positions* instead of objects (and
sealed for that worker: :mod:`lightning_fed.workers.sealing`).

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> states = WorkerOptimizerStates(reset_each_round=False)
    >>> states.activate("alice", [opt])
    >>> p.grad = torch.ones(2); opt.step()
    >>> states.deactivate([opt])
    >>> len(opt.state), sorted(states.export("alice", [opt])[0][0])
    (0, ['momentum_buffer'])
"""

from __future__ import annotations

import copy
import sys
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer


def optimizer_params(optimizer: Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in its order (group after group): the positions checkpoints use."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def delivery_lr(optimizers: Sequence[Optimizer]) -> float:
    """The learning rate a worker's update is delivered with: the first optimizer's first group's (0 without one).

    Example:
        >>> delivery_lr([torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)]), delivery_lr([])
        (0.5, 0.0)
    """
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else 0.0


class WorkerOptimizerStates:
    """Holds each worker's optimizer state dicts and swaps them into the optimizers."""

    def __init__(self, reset_each_round: bool = False) -> None:
        self.reset_each_round = reset_each_round
        self._states: dict[Hashable, list[defaultdict]] = {}
        self._active: Hashable | None = None

    def activate(self, worker_id: Hashable, optimizers: Sequence[Optimizer]) -> None:
        """Make ``worker_id``'s state the optimizers' state (fresh when the worker has none yet)."""
        states = self._states.get(worker_id)
        if states is None or len(states) != len(optimizers):
            states = [defaultdict(dict) for _ in optimizers]
            self._states[worker_id] = states
        for optimizer, state in zip(optimizers, states):
            optimizer.state = state
        self._active = worker_id

    def get(self, worker_id: Hashable) -> list[defaultdict] | None:
        """``worker_id``'s state dicts (one per optimizer, keyed by parameter), or ``None`` if it has none yet."""
        return self._states.get(worker_id)

    def put(self, worker_id: Hashable, states: list[defaultdict]) -> None:
        """Replace ``worker_id``'s state dicts (vectorized training writes them back after a round)."""
        self._states[worker_id] = states

    def deactivate(self, optimizers: Sequence[Optimizer]) -> None:
        """Give the optimizers an empty state (the server side holds none between workers)."""
        for optimizer in optimizers:
            optimizer.state = defaultdict(dict)
        self._active = None

    def end_round(self) -> None:
        if self.reset_each_round:
            self._states.clear()

    def worker_ids(self) -> list[Hashable]:
        return list(self._states)

    def export(self, worker_id: Hashable, optimizers: Sequence[Optimizer]) -> list[dict[int, dict[str, Any]]] | None:
        """``worker_id``'s state as ``[ {param_position: {key: value}} per optimizer ]`` (``None`` if it has none)."""
        states = self._states.get(worker_id)
        if states is None:
            return None
        per_optimizer = []
        for optimizer, state in zip(optimizers, states):
            positions = {id(p): i for i, p in enumerate(optimizer_params(optimizer))}
            per_optimizer.append({positions[id(p)]: dict(entries) for p, entries in state.items() if entries})
        return per_optimizer

    def load(
        self, worker_id: Hashable, per_optimizer: list[dict[int, dict[str, Any]]], optimizers: Sequence[Optimizer]
    ) -> None:
        """Undo :meth:`export` for ``worker_id``."""
        states = []
        for optimizer, entries in zip(optimizers, per_optimizer):
            params = optimizer_params(optimizer)
            state: defaultdict = defaultdict(dict)
            for position, values in entries.items():
                param = params[int(position)]
                state[param] = {
                    key: (value.to(param.device) if isinstance(value, torch.Tensor) and key != "step" else value)
                    for key, value in values.items()
                }
            states.append(state)
        self._states[worker_id] = states

    def clear(self) -> None:
        self._states.clear()


class StepSchedulers(list[Any]):
    """The step-interval LR schedulers, kept per worker (a list of them, as the rounds swap a worker's schedule in),
    with Lightning's configs for them: a scheduler of ``frequency`` n steps after every n-th batch of its worker's
    own, counted across rounds (:meth:`WorkerSchedulerStates.count_batch`).

    Lightning steps a scheduler after a batch when ``(batch_idx + 1) % frequency == 0``, on the round's batch index
    (every worker's batches): before each batch, :meth:`decide` sets the config's ``frequency`` to 1 where the
    worker's own count is a multiple of n (it steps) and to ``sys.maxsize`` where not (it does not, whatever the
    index); :meth:`restore` gives the frequencies back.

    Example:
        >>> from types import SimpleNamespace
        >>> config = SimpleNamespace(scheduler="sched", frequency=3)
        >>> schedulers = StepSchedulers([config])
        >>> schedulers, [(schedulers.decide(n), config.frequency == 1)[1] for n in (1, 2, 3, 4, 5, 6)]
        (['sched'], [False, False, True, False, False, True])
        >>> schedulers.restore(); config.frequency
        3
    """

    def __init__(self, configs: Sequence[Any] = ()) -> None:
        super().__init__(config.scheduler for config in configs)
        self.configs = list(configs)
        self.frequencies = [int(config.frequency) for config in self.configs]

    def decide(self, batches: int | None) -> None:
        """Whether each scheduler steps after the current batch, its worker's ``batches``-th (``None``: no
        worker's, such as a process waiting for the others)."""
        for config, every in zip(self.configs, self.frequencies):
            config.frequency = 1 if batches is not None and batches % every == 0 else sys.maxsize

    def restore(self) -> None:
        """The configs' frequencies as they were given."""
        for config, every in zip(self.configs, self.frequencies):
            config.frequency = every


class WorkerSchedulerStates:
    """Per-worker state of step-interval LR schedulers: each worker's schedule advances with its own local steps.

    Epoch-interval schedulers stay global (stepped once a round, after aggregation). A worker that has not trained
    yet starts from the schedulers' state at the start of fit. Each worker's own batches are counted with its
    schedule, across rounds: what a scheduler's ``frequency`` counts (:class:`StepSchedulers`).

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> states = WorkerSchedulerStates()
        >>> states.activate("a", [sched]); opt.step(); sched.step(); states.deactivate([sched])
        >>> states.activate("b", [sched]); opt.param_groups[0]["lr"]
        1.0
        >>> states.deactivate([sched]); states.activate("a", [sched]); opt.param_groups[0]["lr"]
        0.5
    """

    def __init__(self) -> None:
        self._states: dict[Hashable, list[tuple[dict[str, Any], list[float]]]] = {}
        self._initial: list[tuple[dict[str, Any], list[float]]] | None = None
        self._active: Hashable | None = None
        self._schedulers: Sequence[Any] = ()
        self._batches: dict[Hashable, int] = {}  # each worker's own batches so far (its schedule's, across rounds)
        self.batches = 0  # the active worker's

    @staticmethod
    def _snapshot(schedulers: Sequence[Any]) -> list[tuple[dict[str, Any], list[float]]]:
        return [(copy.deepcopy(s.state_dict()), [g["lr"] for g in s.optimizer.param_groups]) for s in schedulers]

    @staticmethod
    def _load(schedulers: Sequence[Any], snapshot: list[tuple[dict[str, Any], list[float]]]) -> None:
        for scheduler, (state, lrs) in zip(schedulers, snapshot):
            scheduler.load_state_dict(copy.deepcopy(state))
            for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr

    def activate(self, worker_id: Hashable, schedulers: Sequence[Any]) -> None:
        """Save the active worker's schedule (steps Lightning took after its last batch included), load this one's."""
        if not schedulers:
            return
        self.sync()
        if self._initial is None:
            self._initial = self._snapshot(schedulers)
        self._load(schedulers, self._states.get(worker_id, self._initial))
        self.batches = self._batches.get(worker_id, 0)
        self._active = worker_id
        self._schedulers = schedulers

    def count_batch(self) -> int:
        """One more batch of the active worker's own; how many it has had."""
        self.batches += 1
        return self.batches

    def sync(self) -> None:
        """Save the active worker's current schedule (before a checkpoint)."""
        if self._active is not None and self._schedulers:
            self._states[self._active] = self._snapshot(self._schedulers)
            self._batches[self._active] = self.batches

    def deactivate(self, schedulers: Sequence[Any]) -> None:
        self.sync()
        self._active = None

    def reset(self) -> None:
        """Forget every worker's schedule (``reset_optimizer_state=True`` does this each round)."""
        self._states.clear()
        self._batches.clear()
        self._active = None

    def state_dict(self) -> dict[str, Any]:
        """The server's part: the schedules' state at the start of fit (each worker's own is :meth:`export`)."""
        self.sync()
        return {"initial": self._initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._states.clear()
        self._batches.clear()
        self._initial = state.get("initial")

    def export(self, worker_id: Hashable) -> dict[str, Any] | None:
        """``worker_id``'s schedule and batches (``None`` if it has not trained yet)."""
        self.sync()
        states = self._states.get(worker_id)
        return None if states is None else {"schedules": states, "batches": self._batches.get(worker_id, 0)}

    def load(self, worker_id: Hashable, state: dict[str, Any] | list[tuple[dict[str, Any], list[float]]]) -> None:
        """Undo :meth:`export` (a list: the schedules alone, as checkpoints before the batch count held them)."""
        saved = state if isinstance(state, dict) else {"schedules": state, "batches": 0}
        self._states[worker_id] = [(dict(s), list(lrs)) for s, lrs in saved["schedules"]]
        self._batches[worker_id] = int(saved["batches"])
