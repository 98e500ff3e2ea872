"""``BaseDataset``: PySyft 0.2's pair of data and targets tensors, local or at one worker (Part 07).

A ``BaseDataset`` of local tensors is an ordinary map-style dataset (``dataset.federate(workers)`` splits it);
``send(worker)`` gives the worker both tensors and returns a ``BaseDataset`` of pointers; a list of those, one per
worker, makes a :class:`~lightning_fed.data.FederatedDataset` (``FederatedDataset(datasets)``) that a
:class:`~lightning_fed.data.FederatedDataLoader` batches at each worker.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob = sy.VirtualWorker(id="bob")
    >>> local = BaseDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    >>> len(local), local[1]
    (3, (tensor([2., 3.]), tensor(1)))
    >>> remote = local.send(bob)
    >>> remote.location is bob, len(remote), len(bob.objects)
    (True, 3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers.api import send_tensor
from lightning_fed.pointers.pointer_tensor import PointerTensor, check_worker
from lightning_fed.workers.base import BaseWorker


class BaseDataset(Dataset):
    """Data points and their targets, as two tensors with one row per sample.

    Args:
        data: the inputs, a tensor (or a pointer: then ``targets`` must point to the same worker).
        targets: the targets, one row per data row.
        transform: a function applied to each data row when it is read (local datasets only).
    """

    def __init__(
        self, data: torch.Tensor, targets: torch.Tensor, transform: Callable[[Any], Any] | None = None
    ) -> None:
        for name, value in (("data", data), ("targets", targets)):
            if not isinstance(value, torch.Tensor):
                raise FederatedConfigError(
                    f"`{name}` must be a tensor or a pointer, got {type(value).__name__}: pass e.g. "
                    "BaseDataset(torch.tensor(...), torch.tensor(...))."
                )
        remote = [isinstance(t, PointerTensor) for t in (data, targets)]
        if remote[0] != remote[1]:
            kinds = ["a pointer" if r else "a local tensor" for r in remote]
            raise FederatedConfigError(
                "`data` and `targets` must both be local tensors or both pointers to the same worker, got "
                f"{kinds[0]} and {kinds[1]}: send both to the worker."
            )
        if remote[0] and data.location is not targets.location:
            raise FederatedConfigError(
                f"`data` is at worker {data.location.id!r} but `targets` at worker {targets.location.id!r}: a "
                "BaseDataset lives at one worker. Move one of them, e.g. `targets.move(data.location)`."
            )
        if data.dim() == 0 or targets.dim() == 0 or data.shape[0] != targets.shape[0]:
            raise FederatedConfigError(
                f"`data` of shape {tuple(data.shape)} and `targets` of shape {tuple(targets.shape)} must have the "
                "same number of rows (one target per data point)."
            )
        if transform is not None and not callable(transform):
            raise FederatedConfigError(f"`transform={transform!r}` is not callable: pass a function or None.")
        if transform is not None and remote[0]:
            raise FederatedConfigError(
                "`transform` applies to local data only: transform the data before sending it, or build the "
                "BaseDataset locally and split it with `dataset.federate(workers)`."
            )
        self.data = data
        self.targets = targets
        self.transform_ = transform

    @property
    def location(self) -> BaseWorker | None:
        """The worker holding the tensors, or ``None`` when they are local."""
        return self.data.location if isinstance(self.data, PointerTensor) else None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.data[index]
        if self.transform_ is not None:
            item = self.transform_(item)
        return item, self.targets[index]

    def transform(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``transform`` to the whole (local) data tensor now, in place of it."""
        if self.location is not None:
            raise FederatedConfigError(
                f"this BaseDataset is at worker {self.location.id!r}: transform the data before sending it."
            )
        self.data = transform(self.data)

    def send(self, worker: BaseWorker) -> BaseDataset:
        """Give ``worker`` the data and targets; returns a ``BaseDataset`` of the two pointers."""
        check_worker(worker)
        if self.location is not None:
            raise FederatedConfigError(
                f"this BaseDataset is already at worker {self.location.id!r}: build a new one from local tensors, "
                f"or move its tensors (`dataset.data.move({worker.id})`, `dataset.targets.move(...)`)."
            )
        if self.transform_ is not None:
            raise FederatedConfigError(
                "a BaseDataset with a `transform` cannot be sent (nothing executable leaves this process): apply it "
                "first with `dataset.transform(fn)`, or split it with `dataset.federate(workers)`, which transforms "
                "each sample at its worker."
            )
        return BaseDataset(send_tensor(self.data, worker), send_tensor(self.targets, worker))

    def get(self) -> BaseDataset:
        """Bring the data and targets back from the worker; returns this dataset, now local."""
        if self.location is not None:
            self.data, self.targets = self.data.get(), self.targets.get()
        return self

    def __repr__(self) -> str:
        where = "local" if self.location is None else f"at {self.location.id!r}"
        return f"BaseDataset({len(self)} samples, {where})"
