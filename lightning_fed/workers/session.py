"""``with worker.session(refs) as real:``: the one way code runs at a worker.

A session resolves the references it is given from the worker's own store (its shard's batches, its tensors),
makes the worker the current worker for the code in the ``with`` block (so commands and policies know where they
run), and turns an exception in the block into a :class:`~lightning_fed.exceptions.WorkerError` naming the worker.
Nothing is parked in attributes and no plan is re-entered: the code that runs at the worker is the code in the
block. What the block hands back (the training step's loss, for Lightning's progress bar and logs) leaves the
worker as it is; objects in the worker's store leave only through ``.get()`` under its access policy.

A worker on another machine (the deployment layer) implements the same session over its transport.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob = sy.VirtualWorker(id="bob-session")
    >>> ptr = sy.send(torch.tensor([1.0, 2.0]), bob)
    >>> from lightning_fed.workers.base import current_worker
    >>> with bob.session(ptr) as x:
    ...     (current_worker().id, float(x.sum()))
    ('bob-session', 3.0)
    >>> current_worker() is None
    True
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from lightning_fed.exceptions import WorkerError
from lightning_fed.workers.messages import ObjectRef

if TYPE_CHECKING:
    from lightning_fed.workers.base import BaseWorker


def refs_in(value: Any) -> Any:
    """``value`` with every pointer replaced by the reference its worker resolves (tuples, lists, dicts kept)."""
    id_at_location = getattr(value, "id_at_location", None)
    if id_at_location is not None and hasattr(value, "location"):
        return ObjectRef(id_at_location)
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(refs_in(item) for item in value)
    if kind is dict:
        return {key: refs_in(item) for key, item in value.items()}
    return value


class WorkerSession:
    """The context in which code runs at ``worker`` (see the module docstring); ``refs`` are pointers or
    :class:`~lightning_fed.workers.messages.ObjectRef` structures to resolve from the worker's store."""

    __slots__ = ("_token", "inputs", "label", "real", "refs", "worker")

    def __init__(self, worker: BaseWorker, refs: Any = None, label: str = "plan 'session'") -> None:
        self.worker = worker
        self.refs = refs
        self.label = label
        self.real: Any = None
        self.inputs: dict[int, int] = {}
        self._token: Any = None

    def __enter__(self) -> Any:
        self.worker.check_reachable()
        self.real = self.worker.resolve(refs_in(self.refs), self.inputs) if self.refs is not None else None
        self._token = self.worker.enter()
        return self.real

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.worker.leave(self._token)
        self._token = None
        if isinstance(error, Exception) and not isinstance(error, WorkerError):
            raise WorkerError(
                f"worker {self.worker.id!r} failed to run {self.label}: {type(error).__name__}: {error}"
            ) from error
