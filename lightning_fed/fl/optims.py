"""``Optims``: one optimizer per worker over the same model, each with its own state (PySyft's ``Optims``).

A model that visits several workers (``model.send(data.location)``) should not carry one worker's Adam moments or
momentum to the next: ``optims.get_optim(worker_id)`` hands each worker its own optimizer, all built like the
template one (same class, parameter groups and hyper-parameters), each starting from the template's state.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> optims = Optims(["bob", "alice"], optim=torch.optim.Adam(model.parameters(), lr=0.1))
    >>> bob_opt = optims.get_optim("bob")
    >>> bob_opt is optims.get_optim("alice"), type(bob_opt).__name__, bob_opt.param_groups[0]["lr"], optims.count()
    (False, 'Adam', 0.1, 2)
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker


def _key(worker: Any) -> str:
    """Workers are named by id (``"bob"``), by worker object, or by an int id; all map to ``str(id)``."""
    return str(worker.id if isinstance(worker, BaseWorker) else worker)


class Optims:
    """One optimizer per worker, built like ``optim``.

    Args:
        workers: the workers' ids (or the worker objects).
        optim: the template optimizer, built on the model's parameters; it is not used for any worker itself.
    """

    def __init__(self, workers: Sequence[Hashable | BaseWorker], optim: torch.optim.Optimizer) -> None:
        if not isinstance(optim, torch.optim.Optimizer):
            raise FederatedConfigError(
                f"`optim={optim!r}` is not valid: pass an optimizer instance built on the model's parameters, e.g. "
                "optim=torch.optim.SGD(model.parameters(), lr=0.1)."
            )
        if isinstance(workers, (str, BaseWorker)) or not isinstance(workers, Sequence) or not workers:
            raise FederatedConfigError(
                f"`workers={workers!r}` is not valid: pass a non-empty list of worker ids, e.g. ['bob', 'alice']."
            )
        keys = [_key(w) for w in workers]
        if len(set(keys)) != len(keys):
            raise FederatedConfigError(f"`workers={keys!r}` names a worker twice: give each worker once.")
        self.optim = optim
        self.workers = list(workers)
        self.optimizers: dict[str, torch.optim.Optimizer] = {key: _like(optim) for key in keys}

    def get_optim(self, worker: Hashable | BaseWorker) -> torch.optim.Optimizer:
        """The optimizer of ``worker`` (its id, e.g. ``data.location.id``, or the worker object)."""
        try:
            return self.optimizers[_key(worker)]
        except KeyError:
            raise KeyError(
                f"no optimizer for worker {_key(worker)!r}: Optims was built for {list(self.optimizers)}."
            ) from None

    def count(self) -> int:
        """How many workers have an optimizer."""
        return len(self.optimizers)

    def __repr__(self) -> str:
        return f"Optims({type(self.optim).__name__} for {list(self.optimizers)})"


def _like(template: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A new optimizer of the template's class over the same parameters and hyper-parameters, with its own copy of
    the template's state (``load_state_dict`` alone would share the state tensors)."""
    groups = [dict(group) for group in template.param_groups]  # the same parameter objects, own settings dicts
    optimizer = type(template)(groups, **template.defaults)
    optimizer.load_state_dict(copy.deepcopy(template.state_dict()))
    return optimizer
