"""``FederatedDataLoader``: batches built by each worker from its own shard, handed out as pointers.

The loader never sees a sample: for every batch it asks the owning worker to gather the indices from its shard and
collate them, and yields the pointers the worker answers with (``data.location`` is the worker). Shuffling is
seeded per (seed, epoch, worker), so the same seed gives the same batches, and a resumed run continues exactly.

Example:
    >>> import torch, lightning_fed as sy
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed.data import FederatedDataLoader, federate
    >>> a, b = sy.VirtualWorker(id="a"), sy.VirtualWorker(id="b")
    >>> fed = federate(TensorDataset(torch.randn(10, 3), torch.arange(10)), (a, b))
    >>> loader = FederatedDataLoader(fed, batch_size=4, shuffle=True)
    >>> len(loader)
    4
    >>> [(data.location.id, tuple(data.shape)) for data, target in loader]
    [('a', (4, 3)), ('a', (1, 3)), ('b', (4, 3)), ('b', (1, 3))]
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset, default_collate

from lightning_fed.data.federated import FederatedDataset
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers.pointer_tensor import pointers_from
from lightning_fed.workers.base import BaseWorker, me
from lightning_fed.workers.messages import ObjectRef, PlanMessage

_ORDERS = ("sequential", "round_robin")
_plan_counter = itertools.count()


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, worker index...), independent of Python's hash."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _make_batch(shard: Any, indices: torch.Tensor, *, collate_fn: Callable[[list[Any]], Any]) -> Any:
    """The plan a worker runs: gather ``indices`` (positions in its shard) and collate; only tensors leave. No
    ``indices`` (a Poisson draw can take no sample) give one sample's batch with zero rows."""
    if indices.numel() == 0:
        return _empty_like(_make_batch(shard, torch.zeros(1, dtype=torch.long), collate_fn=collate_fn))
    positions = indices.tolist()
    batch = _tensor_rows(shard, positions) if collate_fn is default_collate else None
    if batch is None:
        getitems = getattr(shard, "__getitems__", None)
        samples = getitems(positions) if callable(getitems) else [shard[i] for i in positions]
        batch = collate_fn(samples)
    _check_tensors_only(batch)
    return batch


def _empty_like(batch: Any) -> Any:
    """The same structure with zero rows (tensors sliced ``[:0]``)."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, dict):
        return {k: _empty_like(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [_empty_like(v) for v in batch]
        return type(batch)(items) if not hasattr(batch, "_fields") else type(batch)(*items)
    return batch


def _tensor_rows(shard: Any, positions: list[int]) -> list[torch.Tensor] | None:
    """``default_collate`` of a ``TensorDataset``'s samples (through any ``Subset``s), by one indexing per tensor
    instead of one ``__getitem__`` per sample: the same values, dtypes and (list) structure. ``None`` otherwise."""
    dataset = shard
    while isinstance(dataset, Subset):
        positions = [dataset.indices[i] for i in positions]
        dataset = dataset.dataset
    if type(dataset) is not TensorDataset:  # a subclass may override __getitem__
        return None
    index = torch.as_tensor(positions, dtype=torch.long)
    return [t[index.to(t.device)] for t in dataset.tensors]


def _check_tensors_only(batch: Any, where: str = "batch") -> None:
    """Refuse to answer with anything but tensors (in tuples, lists, dicts): other values would reach ``me``."""
    if isinstance(batch, torch.Tensor):
        return
    if isinstance(batch, (tuple, list)):
        for i, item in enumerate(batch):
            _check_tensors_only(item, f"{where}[{i}]")
    elif isinstance(batch, dict):
        for key, item in batch.items():
            _check_tensors_only(item, f"{where}[{key!r}]")
    else:
        raise FederatedConfigError(
            f"{where} is a {type(batch).__name__}, not a tensor: a worker hands out pointers to tensors only, and "
            "this value would reach the server in the clear. Turn it into a tensor in the dataset or `collate_fn`, "
            "or drop it."
        )


def check_batching(batch_size: Any, seed: Any) -> None:
    """``batch_size`` is an integer >= 1 and ``seed`` an integer >= 0; else an error naming the argument."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FederatedConfigError(f"`batch_size={batch_size!r}` is not valid: pass an integer >= 1.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FederatedConfigError(f"`seed={seed!r}` is not valid: pass an integer >= 0.")


class EpochClock:
    """The epoch a loader shuffles for. Lightning's fit loop calls ``loader.sampler.set_epoch(epoch)``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class FederatedDataLoader:
    """Iterate over a :class:`FederatedDataset` in batches of pointers, each batch built by its worker.

    Args:
        federated_dataset: the dataset split among workers (``dataset.federate(workers)``).
        batch_size: samples per batch.
        shuffle: reshuffle each worker's shard every epoch (seeded).
        drop_last: drop each worker's last incomplete batch.
        collate_fn: how a worker turns samples into a batch (default: ``torch.utils.data.default_collate``).
        seed: drives the shuffling.
        order: ``"sequential"`` (all of one worker's batches, then the next worker's, as PySyft did) or
            ``"round_robin"`` (one batch from each worker in turn).
    """

    def __init__(
        self,
        federated_dataset: FederatedDataset,
        batch_size: int = 8,
        shuffle: bool = False,
        drop_last: bool = False,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        seed: int = 0,
        order: str = "sequential",
        **unsupported: Any,
    ) -> None:
        if unsupported:
            names = ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
            raise FederatedConfigError(
                f"FederatedDataLoader does not support {names}: workers build their batches in this process, so "
                "remove these arguments (supported: batch_size, shuffle, drop_last, collate_fn, seed, order)."
            )
        if not isinstance(federated_dataset, FederatedDataset):
            raise FederatedConfigError(
                f"`federated_dataset` must be a FederatedDataset, got {type(federated_dataset).__name__}: "
                "split the dataset first with `dataset.federate(workers)` or lightning_fed.data.federate()."
            )
        check_batching(batch_size, seed)
        if order not in _ORDERS:
            raise FederatedConfigError(f"`order={order!r}` is not valid: choose one of {_ORDERS}.")
        self.federated_dataset = federated_dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.seed = int(seed)
        self.order = order
        self.sampler = EpochClock()
        self._iterations = 0
        self._plan = f"lightning_fed.batch.{next(_plan_counter)}"
        plan = functools.partial(_make_batch, collate_fn=self.collate_fn)
        for worker in federated_dataset.workers:
            worker.install_plan(self._plan, plan)
        weakref.finalize(self, _remove_plan, list(federated_dataset.workers), self._plan)

    @property
    def dataset(self) -> FederatedDataset:
        return self.federated_dataset

    @property
    def workers(self) -> list[BaseWorker]:
        return self.federated_dataset.workers

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the next iteration shuffles for (Lightning does this through ``sampler.set_epoch``)."""
        self.sampler.set_epoch(epoch)

    def num_batches(self, worker: BaseWorker | Hashable) -> int:
        """How many batches ``worker`` (an object or an id) yields per epoch."""
        n = len(self.federated_dataset[_worker_id(worker)])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return sum(self.num_batches(w) for w in self.workers)

    def _shard_order(self, position: int, length: int, epoch: int) -> torch.Tensor:
        """Positions in a shard, in the order of ``epoch`` (seeded per seed, epoch and worker position)."""
        if not self.shuffle:
            return torch.arange(length)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, position))
        return torch.randperm(length, generator=generator)

    def _batch_starts(self, length: int) -> range:
        stop = length - length % self.batch_size if self.drop_last else length
        return range(0, stop, self.batch_size)

    def batch_indices(self, worker: BaseWorker | Hashable, epoch: int | None = None) -> list[list[int]]:
        """The dataset indices of each batch ``worker`` yields in ``epoch`` (default: the current epoch).

        Computed from the partition and the seed alone, without asking the worker: what :meth:`worker_batches`
        gathers there.
        """
        worker_id = _worker_id(worker)
        shard = self.federated_dataset.partition[self._position(worker_id)]
        order = self._shard_order(self._position(worker_id), len(shard), self._epoch(epoch)).tolist()
        return [[shard[j] for j in order[s : s + self.batch_size]] for s in self._batch_starts(len(order))]

    def worker_batches(self, worker: BaseWorker | Hashable, epoch: int | None = None) -> Iterator[Any]:
        """The batches (pointer pairs) of one worker for ``epoch`` (default: the loader's current epoch)."""
        return self.batches_at(worker, self.batch_positions(worker, epoch))

    def batches_at(self, worker: BaseWorker | Hashable, positions: Iterable[torch.Tensor]) -> Iterator[Any]:
        """The batches (pointer pairs) built at ``worker`` from each of ``positions`` (in its shard), one at a time:
        the loader's own batches, or another sampler's (Poisson sampling's, for DP-SGD)."""
        shard = self.federated_dataset[_worker_id(worker)]
        for chosen in positions:
            # the positions travel as one tensor, not a list the worker would walk item by item looking for refs
            message = PlanMessage(self._plan, (ObjectRef(shard.id_at_location), chosen))
            yield pointers_from(me._send(message, shard.location), shard.location)

    def batch_positions(self, worker: BaseWorker | Hashable, epoch: int | None = None) -> Iterator[torch.Tensor]:
        """Each batch of ``worker`` in ``epoch`` as positions in its shard (what :meth:`worker_batches` gathers)."""
        worker_id = _worker_id(worker)
        order = self._shard_order(self._position(worker_id), len(self.federated_dataset[worker_id]), self._epoch(epoch))
        for start in self._batch_starts(len(order)):
            yield order[start : start + self.batch_size]

    def gather(self, shard: Any, positions: torch.Tensor) -> Any:
        """The batch at ``positions`` of ``shard``, the worker's own dataset: for code that runs at the worker, in
        its session (``with worker.session(shard_pointer) as shard:``), as a fused local loop does. Nothing is
        stored at the worker and no pointer is made: the batch lives as long as the code that uses it."""
        return _make_batch(shard, positions, collate_fn=self.collate_fn)

    def gather_batches(self, shard: Any, positions: list[torch.Tensor]) -> list[Any]:
        """:meth:`gather` of each of ``positions``, with one indexing of the shard for all of them where its batches
        are rows of a ``TensorDataset`` (the same values as one :meth:`gather` each)."""
        if len(positions) > 1 and self.collate_fn is default_collate:
            rows = _tensor_rows(shard, torch.cat(positions).tolist())
            if rows is not None:
                sizes = [len(p) for p in positions]
                return [list(parts) for parts in zip(*(t.split(sizes) for t in rows))]
        return [self.gather(shard, p) for p in positions]

    def _position(self, worker_id: Hashable) -> int:
        self.federated_dataset[worker_id]  # a clear KeyError for an unknown worker
        return self.federated_dataset.worker_ids.index(worker_id)

    def _epoch(self, epoch: int | None) -> int:
        return self.sampler.epoch if epoch is None else int(epoch)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.sampler.epoch
        streams = [self.worker_batches(w, epoch) for w in self.workers]
        self.sampler.epoch = epoch + 1  # a plain loop reshuffles every epoch; Lightning sets the epoch explicitly
        if self.order == "sequential":
            for stream in streams:
                yield from stream
        else:  # one batch from each worker in turn; no batch is held here once yielded (zip_longest would)
            while streams:
                for stream in list(streams):
                    try:
                        yield next(stream)
                    except StopIteration:
                        streams.remove(stream)

    def __repr__(self) -> str:
        return (
            f"FederatedDataLoader({len(self.workers)} workers, {len(self)} batches of {self.batch_size}, "
            f"shuffle={self.shuffle}, order={self.order!r})"
        )


def _worker_id(worker: BaseWorker | Hashable) -> Hashable:
    return worker.id if isinstance(worker, BaseWorker) else worker


def _remove_plan(workers: list[BaseWorker], plan: str) -> None:
    for worker in workers:
        worker.remove_plan(plan)
