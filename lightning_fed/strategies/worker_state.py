"""Per-worker optimizer state (momentum buffers, Adam moments) kept across rounds, moved by reference.

An optimizer's ``state`` is a dict keyed by parameter object. Each worker owns one such dict per optimizer; when a
worker starts training, its dicts become the optimizers' ``state`` (no tensor is copied), and when it stops they go
back to the worker. For checkpoints the dicts are written with parameter *positions* instead of objects.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> states = WorkerOptimizerStates(reset_each_round=False)
    >>> states.activate("alice", [opt])
    >>> p.grad = torch.ones(2); opt.step()
    >>> states.deactivate([opt])
    >>> len(opt.state), sorted(states.to_checkpoint([opt])["alice"][0][0])
    (0, ['momentum_buffer'])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer


def _params(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


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

    def deactivate(self, optimizers: Sequence[Optimizer]) -> None:
        """Give the optimizers an empty state (the server side holds none between workers)."""
        for optimizer in optimizers:
            optimizer.state = defaultdict(dict)
        self._active = None

    def end_round(self) -> None:
        if self.reset_each_round:
            self._states.clear()

    def to_checkpoint(self, optimizers: Sequence[Optimizer]) -> dict[Hashable, list[dict[int, dict[str, Any]]]]:
        """``{worker_id: [ {param_position: {key: value}} per optimizer ]}``."""
        out: dict[Hashable, list[dict[int, dict[str, Any]]]] = {}
        for worker_id, states in self._states.items():
            per_optimizer = []
            for optimizer, state in zip(optimizers, states):
                positions = {id(p): i for i, p in enumerate(_params(optimizer))}
                per_optimizer.append({positions[id(p)]: dict(entries) for p, entries in state.items() if entries})
            out[worker_id] = per_optimizer
        return out

    def load_checkpoint(
        self, saved: dict[Hashable, list[dict[int, dict[str, Any]]]], optimizers: Sequence[Optimizer]
    ) -> None:
        self._states.clear()
        for worker_id, per_optimizer in saved.items():
            states = []
            for optimizer, entries in zip(optimizers, per_optimizer):
                params = _params(optimizer)
                state: defaultdict = defaultdict(dict)
                for position, values in entries.items():
                    param = params[int(position)]
                    state[param] = {
                        key: (value.to(param.device) if isinstance(value, torch.Tensor) and key != "step" else value)
                        for key, value in values.items()
                    }
                states.append(state)
            self._states[worker_id] = states
