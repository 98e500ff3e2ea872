"""``federate``: split a dataset among workers, each receiving its shard as a lazy view.

Each worker is handed a :class:`torch.utils.data.Subset` of the dataset (indices only: images are decoded and
transforms run at the worker, when it builds a batch); ``me`` keeps a :class:`DatasetPointer` per worker and the
partition's statistics, never the data.

Privacy by default: every worker has the strict data-access policy unless its creator chose another
(``VirtualWorker(id=..., policy=...)``), so its shard, the batches built from it and anything computed from them
never leave it through ``.get()``; model updates and scalar metrics do (audited in ``worker.audit_log``). ``policy=``
sets the workers' policy before their shards arrive: ``"strict"``, ``"open"`` (everything may leave, audited; an
explicit opt-in for data that is not private, which warns once per process) or a
:class:`~lightning_fed.privacy.DataAccessPolicy`; ``None`` (the default) keeps each worker's own.

Example:
    >>> import torch, lightning_fed as sy
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed.data import federate
    >>> ds = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
    >>> a, b = sy.VirtualWorker(id="a"), sy.VirtualWorker(id="b")
    >>> fed = federate(ds, (a, b), seed=0)
    >>> len(fed), fed.lengths
    (10, {'a': 5, 'b': 5})
    >>> fed["a"].location is a
    True
    >>> x, y = next(iter(sy.FederatedDataLoader(fed, batch_size=5)))
    >>> x.get()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: worker 'a' refuses to release object ... (data, shape (5, 3))...
    >>> float(((x - x) ** 2).sum().get())  # a scalar computed at the worker may leave (audited)
    0.0
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lightning_fed.data.checks import apply_policy, check_not_empty, check_policy, float_labels_hint
from lightning_fed.data.partition import get_partitioner, is_label_based, label_histogram, partition_dataset_indices
from lightning_fed.data.partition.functional import _as_labels
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import clipped
from lightning_fed.workers.base import BaseWorker, VirtualWorker, me
from lightning_fed.workers.messages import DatasetMessage, DeleteMessage, ObjectMessage
from lightning_fed.workers.store import new_object_id

if TYPE_CHECKING:
    from lightning_fed.privacy.policy import DataAccessPolicy


class DatasetPointer:
    """A pointer to a dataset shard held by a worker: its location, id there, and length (the data stays there)."""

    def __init__(self, location: BaseWorker, id_at_location: int, length: int, owner: BaseWorker = me) -> None:
        self.location = location
        self.id_at_location = id_at_location
        self.owner = owner
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.owner._send(DeleteMessage(self.id_at_location), self.location)

    def __repr__(self) -> str:
        where = f"{self.owner.id} -> {self.location.id}:{self.id_at_location}"
        return f"(Wrapper)>[DatasetPointer | {where}, {len(self)} samples]"


def dataset_labels(dataset: Dataset) -> torch.Tensor | None:
    """The integer labels of ``dataset`` without loading samples, when it exposes them (``targets``/``labels``)."""
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            try:
                tensor = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                continue
            if tensor.dim() == 1 and not tensor.is_floating_point():
                return tensor.long()
    tensors = getattr(dataset, "tensors", None)  # TensorDataset(x, y)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        last = tensors[-1]
        if last.dim() == 1 and not last.is_floating_point():
            return last.long()
    return None


def check_workers(workers: Any) -> list[BaseWorker]:
    """Validate a sequence of workers: at least one, all workers (not the local worker ``me``), ids unique."""
    if isinstance(workers, BaseWorker):
        workers = [workers]
    if not isinstance(workers, Sequence) or isinstance(workers, str):
        raise FederatedConfigError(
            f"`workers` must be a sequence of workers, got {workers!r}: pass e.g. (alice, bob) of VirtualWorker."
        )
    if len(workers) == 0:
        raise FederatedConfigError("`workers` is empty: pass at least one worker, e.g. (alice, bob).")
    for i, worker in enumerate(workers):
        if not isinstance(worker, BaseWorker):
            name = worker if isinstance(worker, (str, int)) and not isinstance(worker, bool) else "alice"
            raise FederatedConfigError(
                f"`workers[{i}]={worker!r}` ({type(worker).__name__}) is not a worker: create one with "
                f"lightning_fed.VirtualWorker(id={name!r}) and pass that object."
            )
        if worker is me:
            raise FederatedConfigError(
                f"`workers[{i}]` is the local worker `me`: the data would stay on the server side. Pass remote "
                "workers only, e.g. lightning_fed.VirtualWorker(id='alice')."
            )
    ids = [w.id for w in workers]
    duplicates = sorted({str(i) for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FederatedConfigError(
            f"`workers` has duplicate ids {duplicates}: each worker needs its own id (workers={ids!r})."
        )
    return list(workers)


def make_workers(workers: Any) -> list[BaseWorker]:
    """Workers from a count (``"worker_0"``, ...), a list of ids (new VirtualWorkers), or worker objects.

    Example:
        >>> [w.id for w in make_workers(2)], [w.id for w in make_workers(["alice", 7])]
        (['worker_0', 'worker_1'], ['alice', 7])
    """
    if isinstance(workers, int) and not isinstance(workers, bool):
        if workers < 1:
            raise FederatedConfigError(f"`workers={workers!r}` is not valid: pass a number of workers >= 1.")
        return [VirtualWorker(id=f"worker_{i}") for i in range(workers)]
    if isinstance(workers, BaseWorker):
        workers = [workers]
    if isinstance(workers, str) or not isinstance(workers, Sequence):
        fix = f"workers=[{workers!r}]" if isinstance(workers, str) else "workers=2 or workers=['alice', 'bob']"
        raise FederatedConfigError(
            f"`workers={workers!r}` ({type(workers).__name__}) is not valid: pass a number of workers, a list of "
            f"ids, or a list of VirtualWorker objects, e.g. {fix}."
        )
    if len(workers) == 0:
        raise FederatedConfigError("`workers=[]` is empty: pass at least one worker, e.g. workers=['alice', 'bob'].")
    made = []
    for i, worker in enumerate(workers):
        if isinstance(worker, (str, int)) and not isinstance(worker, bool):
            worker = VirtualWorker(id=worker)
        elif not isinstance(worker, BaseWorker):
            raise FederatedConfigError(
                f"`workers[{i}]={worker!r}` ({type(worker).__name__}) is not valid: each entry is a worker id "
                "(str or int) or a VirtualWorker object."
            )
        made.append(worker)
    return check_workers(made)  # duplicate ids, the local worker `me`


def _check_partition_args(partition: Any, partition_args: dict[str, Any]) -> None:
    """Name the arguments the partitioner does not take, and the required ones missing, before it fails with a bare
    TypeError.

    Example:
        >>> _check_partition_args("dirichlet", {})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: Partitioner 'dirichlet' needs `alpha`, which was not given: ...
    """
    fn = get_partitioner(partition)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to check against
        return
    name = partition if isinstance(partition, str) else getattr(fn, "__name__", repr(fn))
    named = [p for p in params[2:] if p.name != "seed" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = [p.name for p in named]
    unknown = [key for key in partition_args if key not in accepted]
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        given = ", ".join(f"{k}={partition_args[k]!r}" for k in unknown)
        raise FederatedConfigError(
            f"Partitioner {name!r} does not take {given}: remove it, or pass one of its arguments {accepted}."
        )
    missing = [p.name for p in named if p.default is p.empty and p.name not in partition_args]
    if missing:
        example = ", ".join(f"{m}={_EXAMPLES.get(m, '...')}" for m in missing)
        raise FederatedConfigError(
            f"Partitioner {name!r} needs {', '.join(f'`{m}`' for m in missing)}, which was not given: pass it, e.g. "
            f"{example}."
        )


_EXAMPLES = {"alpha": "0.5 (lower is more skewed)", "shards_per_worker": "2"}


class FederatedDataset:
    """A dataset split among workers: one :class:`DatasetPointer` per worker, plus the partition's statistics.

    Built by :func:`federate` (``dataset.federate(workers)``), or, as in PySyft, from datasets already at their
    workers: ``FederatedDataset([bob_dataset, alice_dataset])``, each a :class:`~lightning_fed.BaseDataset` of
    pointers (``BaseDataset(data_ptr, target_ptr)`` or ``BaseDataset(data, targets).send(worker)``), one per worker.
    Its samples are then numbered in the order of the list, and its labels stay at the workers.

    Args:
        dataset: the dataset to split (anything with ``__len__`` and ``__getitem__``), or the list of sent
            ``BaseDataset`` s (then leave out the other arguments).
        workers: the workers, in order.
        partition: one list of dataset indices per worker.
        labels: the dataset's labels (for the label histogram), if known.
        policy: the workers' data-access policy, set on each before its shard arrives: ``"strict"``, ``"open"`` or
            a :class:`~lightning_fed.privacy.DataAccessPolicy`; ``None`` (the default) keeps each worker's own
            (strict unless you chose otherwise). With sent ``BaseDataset`` s the data is already at the workers: a
            worker whose policy this changes counts it as private from then on; at a worker that keeps its policy,
            data you sent stays yours.

    Example:
        >>> import torch, lightning_fed as sy
        >>> bob, alice = sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice")
        >>> parts = [sy.BaseDataset(torch.randn(n, 2), torch.zeros(n)).send(w) for n, w in ((3, bob), (2, alice))]
        >>> fed = FederatedDataset(parts)
        >>> fed.worker_ids, len(fed), fed.partition
        (['bob', 'alice'], 5, [[0, 1, 2], [3, 4]])
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[Any],
        workers: Sequence[BaseWorker] | None = None,
        partition: Sequence[Sequence[int]] | None = None,
        *,
        labels: torch.Tensor | None = None,
        policy: DataAccessPolicy | str | None = None,
    ) -> None:
        self.datasets: dict[Hashable, Any] = {}
        checked_policy = check_policy(policy)  # before anything is sent
        if workers is None and partition is None and labels is None:
            self._from_sent_datasets(dataset, checked_policy)
            return
        if workers is None or partition is None:
            raise FederatedConfigError(
                "FederatedDataset takes either a list of sent BaseDatasets (FederatedDataset(datasets)) or a "
                f"dataset with its `workers` and `partition`; got workers={workers!r}, partition={partition!r}. "
                "To split a dataset, use `dataset.federate(workers)` or lightning_fed.data.federate()."
            )
        self.workers = check_workers(workers)
        if len(partition) != len(self.workers):
            raise FederatedConfigError(
                f"`partition` has {len(partition)} index lists for {len(self.workers)} workers: give one per worker."
            )
        self.partition = [list(map(int, part)) for part in partition]
        apply_policy(self.workers, checked_policy)
        self.shards: dict[Hashable, DatasetPointer] = {}
        for worker, indices in zip(self.workers, self.partition, strict=True):
            obj_id = new_object_id()
            me._send(ObjectMessage(obj_id, Subset(dataset, indices)), worker)
            self.shards[worker.id] = DatasetPointer(worker, obj_id, len(indices))
            self.datasets[worker.id] = self.shards[worker.id]
        self.num_classes: int | None = None
        self.label_histogram: np.ndarray | None = None
        if labels is not None:
            self.num_classes = int(labels.max().item()) + 1 if len(labels) else 0
            self.label_histogram = label_histogram(labels, self.partition, self.num_classes)

    def _from_sent_datasets(self, datasets: Any, policy: DataAccessPolicy | None) -> None:
        from lightning_fed.data.base_dataset import BaseDataset  # PySyft's signature: FederatedDataset(datasets)

        if isinstance(datasets, (Dataset, str)) or not isinstance(datasets, Sequence) or not datasets:
            raise FederatedConfigError(
                f"FederatedDataset({type(datasets).__name__}) needs a non-empty list of BaseDatasets sent to their "
                "workers (one per worker), or a dataset with `workers` and `partition`: to split a local dataset, "
                "use `dataset.federate(workers)`."
            )
        for i, part in enumerate(datasets):
            if not isinstance(part, BaseDataset) or part.location is None:
                what = "a local BaseDataset" if isinstance(part, BaseDataset) else type(part).__name__
                raise FederatedConfigError(
                    f"`datasets[{i}]` is {what}, not a BaseDataset at a worker: send it first "
                    "(`BaseDataset(data, targets).send(worker)`), or build it from pointers."
                )
        self.workers = check_workers([part.location for part in datasets])  # one dataset per worker
        self.shards = {}
        self.partition = []
        start = 0
        for worker, part in zip(self.workers, datasets, strict=True):
            obj_id = new_object_id()
            tensor_ids = (part.data.id_at_location, part.targets.id_at_location)
            length = me._send(DatasetMessage(obj_id, tensor_ids), worker)
            self.shards[worker.id] = DatasetPointer(worker, obj_id, length)
            self.datasets[worker.id] = part
            self.partition.append(list(range(start, start + length)))
            start += length
        apply_policy(self.workers, policy)  # after the datasets are built: a changed policy counts them private
        self.num_classes = None
        self.label_histogram = None

    @property
    def worker_ids(self) -> list[Hashable]:
        return [w.id for w in self.workers]

    @property
    def lengths(self) -> dict[Hashable, int]:
        """Samples per worker, by worker id."""
        return {wid: len(shard) for wid, shard in self.shards.items()}

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards.values())

    def __getitem__(self, worker_id: Hashable) -> DatasetPointer:
        try:
            return self.shards[worker_id]
        except KeyError:
            raise KeyError(f"no worker {worker_id!r} in this FederatedDataset; workers: {self.worker_ids}") from None

    def summary(self, max_rows: int | None = 20) -> str:
        """A text table: samples per worker and, when labels are known, the label histogram; the first ``max_rows``
        workers and how many more (``None``: every worker)."""
        header = f"{'worker':>12} {'samples':>8}"
        if self.label_histogram is not None:
            header += "  " + " ".join(f"{c:>5}" for c in range(self.num_classes or 0))
        lines = []
        for k, worker in enumerate(self.workers):
            line = f"{worker.id!s:>12} {len(self.shards[worker.id]):>8}"
            if self.label_histogram is not None:
                line += "  " + " ".join(f"{int(n):>5}" for n in self.label_histogram[k])
            lines.append(line)
        return "\n".join([header, *clipped(lines, max_rows, "workers (FederatedDataset.summary(max_rows=None): all)")])

    def __repr__(self) -> str:
        return f"FederatedDataset({len(self)} samples over workers {self.worker_ids})"


def federate(
    dataset: Dataset,
    workers: Sequence[BaseWorker],
    partition: Any = "iid",
    *,
    seed: int = 0,
    labels: Any = None,
    policy: DataAccessPolicy | str | None = None,
    **partition_args: Any,
) -> FederatedDataset:
    """Split ``dataset`` among ``workers`` with a partitioner (a registry name or a callable); seeded.

    ``dataset.federate(workers)`` calls this through :class:`~lightning_fed.TorchHook`. Label-based partitioners
    (``"dirichlet"``, ``"shards"``) read the labels from ``labels`` when given (one int class per sample), else from
    ``dataset.targets`` (or ``labels``, or a TensorDataset's last tensor); they also fill the label histogram.

    ``policy`` is set on every worker before its shard arrives: ``"strict"``, ``"open"`` (the shards may leave
    through ``.get()``, audited; warns once per process) or a :class:`~lightning_fed.privacy.DataAccessPolicy`;
    ``None`` (the default) keeps each worker's own policy, which is the strict one unless you chose otherwise.

    Example:
        >>> import torch, lightning_fed as sy
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(4.0).reshape(4, 1), torch.tensor([0, 1, 0, 1]))
        >>> w = sy.VirtualWorker(id="public-benchmark")
        >>> fed = federate(ds, [w], policy=sy.privacy.DataAccessPolicy.open())  # opt out: the data is public
        >>> x, y = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
        >>> y.get(), [(r.command, r.rule) for r in w.audit_log]
        (tensor([0, 1, 0, 1]), [('get', 'release_data')])
    """
    checked = check_workers(workers)
    checked_policy = check_policy(policy)
    try:
        num_samples = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise FederatedConfigError(
            f"`dataset` of type {type(dataset).__name__} has no __len__: federate() needs a map-style dataset "
            "with a known length (an IterableDataset cannot be partitioned by index)."
        ) from None
    check_not_empty(num_samples, "dataset")
    _check_partition_args(partition, partition_args)
    labels = dataset_labels(dataset) if labels is None else torch.from_numpy(_as_labels(labels))
    if labels is None and is_label_based(get_partitioner(partition)) and float_labels_hint(dataset):
        name = partition if isinstance(partition, str) else getattr(partition, "__name__", repr(partition))
        raise FederatedConfigError(f"Partitioner {name!r} needs integer labels.{float_labels_hint(dataset)}")
    parts = partition_dataset_indices(
        partition, num_samples=num_samples, num_workers=len(checked), labels=labels, seed=seed, **partition_args
    )
    return FederatedDataset(dataset, checked, parts, labels=labels, policy=checked_policy)
