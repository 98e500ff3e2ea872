"""``PrivateGridNetwork``: search several workers at once (PySyft's grid, for data discovery by tags).

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.pointers import tag
    >>> bob, alice = sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice")
    >>> kept = [sy.send(tag(torch.zeros(3), "#boston", "#data"), bob), sy.send(tag(torch.ones(1), "#mnist"), alice)]
    >>> grid = PrivateGridNetwork(bob, alice)
    >>> {worker: len(found) for worker, found in grid.search("#boston", "#data").items()}
    {'bob': 1}
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker


class PrivateGridNetwork:
    """A set of workers searched together: ``grid.search(*query)`` is ``{worker id: worker.search(*query)}`` for
    the workers that hold a match (as PySyft's ``sy.PrivateGridNetwork(*workers)``).

    Args:
        workers: the workers to search, each once.
    """

    def __init__(self, *workers: BaseWorker) -> None:
        if not workers:
            raise FederatedConfigError(
                "PrivateGridNetwork() needs workers: pass them, e.g. PrivateGridNetwork(bob, alice)."
            )
        for i, worker in enumerate(workers):
            if not isinstance(worker, BaseWorker):
                raise FederatedConfigError(
                    f"`workers[{i}]={worker!r}` ({type(worker).__name__}) is not a worker: pass VirtualWorker objects."
                )
        ids = [w.id for w in workers]
        if len(set(ids)) != len(ids):
            raise FederatedConfigError(f"PrivateGridNetwork got the same worker id twice: {ids!r}; pass each once.")
        self.workers = list(workers)

    def search(self, *query: str | int | list[str | int]) -> dict[Hashable, list[Any]]:
        """Pointers to the tensors matching every item of ``query``, by worker id; workers without a match are left
        out."""
        found = {worker.id: worker.search(*query) for worker in self.workers}
        return {worker_id: pointers for worker_id, pointers in found.items() if pointers}

    def __repr__(self) -> str:
        return f"PrivateGridNetwork({', '.join(repr(w.id) for w in self.workers)})"
