"""``FederatedDataModule``: any LightningDataModule, with its training data split among workers.

Only the training data is federated. At ``setup("fit")`` the inner datamodule's ``train_dataloader()`` is called
once to find the dataset (its ``.dataset``), the batch size and the ``collate_fn``; the dataset is split with a
partitioner (:func:`~lightning_fed.data.federate`) and ``train_dataloader()`` returns a
:class:`~lightning_fed.data.FederatedDataLoader` of pointers. Everything else (``prepare_data``, ``setup``, the
val/test/predict loaders, ``state_dict``, the batch-transfer hooks, unknown public attributes such as
``num_classes``) is the inner datamodule's. The partition is shown at setup: a table logged with
``rank_zero_info``, :attr:`~FederatedDataModule.partition_stats`, and a label-by-worker heatmap saved in the
trainer's log directory (with matplotlib, the ``plot`` extra).

Private by default: the workers hold their shards under the strict data-access policy (their data, batches and
anything computed from them never leave through ``.get()``; model updates and scalar metrics do, audited in
``worker.audit_log``), unless ``policy=`` says otherwise (``"open"``: an explicit opt-in for data that is not
private, which warns once per process).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed.data import FederatedDataModule
    >>> data = TensorDataset(torch.randn(40, 3), torch.arange(40) % 4)
    >>> dm = FederatedDataModule.from_datasets(data, data, workers=["alice", "bob"], batch_size=8, seed=0)
    >>> dm.setup("fit")
    >>> dm.partition_stats.samples
    {'alice': 20, 'bob': 20}
    >>> data_ptr, target_ptr = next(iter(dm.train_dataloader()))
    >>> type(data_ptr).__name__, data_ptr.location.id, tuple(data_ptr.shape)
    ('PointerTensor', 'alice', (8, 3))
    >>> data_ptr.get()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: worker 'alice' refuses to release object ... (data, shape (8, 3))...
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.data as tud
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from typing_extensions import override

from lightning_fed.data.checks import check_not_empty, check_policy, float_labels_hint
from lightning_fed.data.federated import FederatedDataset, _check_partition_args, dataset_labels, federate, make_workers
from lightning_fed.data.loader import _ORDERS, FederatedDataLoader
from lightning_fed.data.partition import get_partitioner, is_label_based
from lightning_fed.data.plot import PartitionStats
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker

if TYPE_CHECKING:
    from lightning_fed.privacy.policy import DataAccessPolicy

HEATMAP_FILENAME = "partition_heatmap.png"
# Forwarded only when the inner datamodule defines them, so that Lightning still sees which hooks exist (a missing
# val_dataloader means no validation) and a LightningModule's own transfer hooks keep their precedence.
_FORWARDED_HOOKS = ("val_dataloader", "test_dataloader", "predict_dataloader", "transfer_batch_to_device",
                    "on_before_batch_transfer", "on_after_batch_transfer")  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value: Any, ok: bool, fix: str) -> None:
    if not ok:
        raise FederatedConfigError(f"`{name}={value!r}` is not valid: {fix}.")


def _inner_train_data(datamodule: LightningDataModule) -> tuple[DataLoader, Dataset]:
    name = type(datamodule).__name__
    if not is_overridden("train_dataloader", datamodule):
        raise FederatedConfigError(f"`{name}` has no `train_dataloader()`: FederatedDataModule federates its data.")
    try:
        loader = datamodule.train_dataloader()
    except ValueError as err:  # torch's RandomSampler on an empty dataset: "num_samples should be a positive ..."
        if "num_samples=0" not in str(err):
            raise
        raise FederatedConfigError(
            f"`{name}.train_dataloader()` failed because its training dataset is empty ({err}): FederatedDataModule "
            "needs at least one training sample per worker; check where the datamodule loads its data from."
        ) from err
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or dataset is None:
        raise FederatedConfigError(
            f"`{name}.train_dataloader()` returned {type(loader).__name__}, not a torch DataLoader with a dataset: "
            "FederatedDataModule federates that loader's `.dataset`. Return one DataLoader(dataset, ...) from it, "
            "or use FederatedDataModule.from_datasets(train_dataset, ...)."
        )
    if isinstance(dataset, IterableDataset):
        raise FederatedConfigError(
            f"`{name}.train_dataloader().dataset` is an IterableDataset ({type(dataset).__name__}), which cannot be "
            "split by index: use a map-style dataset (with __len__ and __getitem__)."
        )
    return loader, dataset


def _policy_name(policy: DataAccessPolicy | None) -> str | None:
    """How the hyper-parameters record ``policy``: ``None`` (the workers' own), ``"strict"``, ``"open"`` or its repr."""
    if policy is None:
        return None
    named = {type(policy).strict(): "strict", type(policy).open(): "open"}
    return named.get(policy, repr(policy))


class FederatedDataModule(LightningDataModule):
    """Wrap ``datamodule`` so that its training data is split among ``workers`` and served as pointers.

    Args:
        datamodule: the LightningDataModule to wrap.
        workers: a count (creates VirtualWorkers ``"worker_0"``, ...), a list of ids, or VirtualWorker objects.
        partition: a partitioner name (``"iid"``, ``"dirichlet"``, ``"shards"``, ``"quantity_skew"``) or callable.
        seed: drives the partition and the shuffling.
        batch_size: per-worker batch size; ``None`` takes the inner train loader's.
        shuffle: reshuffle each worker's shard every epoch (seeded), as in
            :class:`~lightning_fed.data.FederatedDataLoader`.
        drop_last: drop each worker's last short batch, so that every batch has ``batch_size`` samples (a model
            with a fixed batch size, such as a stateful LSTM, needs it).
        order: ``"sequential"`` (one worker's batches, then the next's) or ``"round_robin"``.
        alpha: the ``"dirichlet"`` partitioner's concentration (lower is more skewed, e.g. 0.3). The six partition
            arguments (``alpha`` to ``power``) are typed parameters, so LightningCLI parses ``--data.alpha=0.3``;
            ``None`` keeps the partitioner's default, and a partitioner refuses, by name, one it does not take.
        shards_per_worker: the ``"shards"`` partitioner's shards per worker (McMahan 2017 uses 2).
        min_size: the smallest shard ``"dirichlet"`` and ``"quantity_skew"`` may give a worker.
        distribution: the ``"quantity_skew"`` size distribution, ``"lognormal"`` or ``"powerlaw"``.
        sigma: the ``"quantity_skew"`` lognormal's sigma.
        power: the ``"quantity_skew"`` power law's exponent.
        partition_args: the arguments of any other (custom) partitioner, as a dict (``--data.partition_args='{beta:
            2}'`` on the command line); from Python they may also be given as keywords (``more_partition_args``).
        policy: the workers' data-access policy, set on each before its shard arrives: ``"strict"`` (their data
            never leaves them; model updates and scalar metrics do, audited), ``"open"`` (everything may leave,
            audited; for data that is not private; warns once per process) or a
            :class:`~lightning_fed.privacy.DataAccessPolicy`. ``None`` (the default) keeps each worker's own: the
            strict policy for workers made from a count or ids, whatever you gave a ``VirtualWorker`` you made.
            Checked here, so a bad value fails before any data moves.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(60, 2), torch.arange(60) % 3)
        >>> inner = LightningDataModule.from_datasets(data, batch_size=10)
        >>> dm = FederatedDataModule(inner, workers=3, partition="shards", shards_per_worker=1)
        >>> dm.setup("fit")
        >>> dm.partition_stats.label_counts
        {'worker_0': [0, 0, 20], 'worker_1': [20, 0, 0], 'worker_2': [0, 20, 0]}
        >>> len(dm.train_dataloader())
        6
    """

    def __init__(
        self,
        datamodule: LightningDataModule,
        *,
        workers: int | Sequence[Hashable | BaseWorker],
        partition: str | Callable[..., list[list[int]]] = "iid",
        alpha: float | None = None,
        shards_per_worker: int | None = None,
        min_size: int | None = None,
        distribution: str | None = None,
        sigma: float | None = None,
        power: float | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        order: str = "sequential",
        partition_args: dict[str, Any] | None = None,
        policy: DataAccessPolicy | str | None = None,
        **more_partition_args: Any,
    ) -> None:
        if not isinstance(datamodule, LightningDataModule):
            raise FederatedConfigError(
                f"`datamodule={datamodule!r}` is not a LightningDataModule instance: pass one (e.g. "
                "MNISTDataModule()), or use FederatedDataModule.from_datasets(train_dataset, ...) for plain datasets."
            )
        self.datamodule = datamodule  # before super().__init__(), which sets `trainer` (forwarded to it)
        super().__init__()
        _check("seed", seed, _is_int(seed) and seed >= 0, "pass an integer >= 0")
        _check("batch_size", batch_size, batch_size is None or (_is_int(batch_size) and batch_size >= 1),
               "pass an integer >= 1, or None to use the inner train loader's")  # fmt: skip
        _check("shuffle", shuffle, isinstance(shuffle, bool), "pass True or False")
        _check("drop_last", drop_last, isinstance(drop_last, bool), "pass True or False")
        _check("order", order, order in _ORDERS, f"choose one of {_ORDERS}")
        _check("partition_args", partition_args, partition_args is None or isinstance(partition_args, dict),
               "pass a dict or None")  # fmt: skip
        typed = {"alpha": alpha, "shards_per_worker": shards_per_worker, "min_size": min_size,
                 "distribution": distribution, "sigma": sigma, "power": power}  # fmt: skip
        typed = {key: value for key, value in typed.items() if value is not None}
        given = [set(partition_args or {}), set(more_partition_args), set(typed)]
        both = sorted((given[0] & given[1]) | (given[0] & given[2]) | (given[1] & given[2]))
        if both:
            raise FederatedConfigError(
                f"{both} given twice (as a parameter, in `partition_args` or as a keyword): give each once."
            )
        fn = get_partitioner(partition)  # an unknown name fails here, not at setup
        all_partition_args = {**typed, **(partition_args or {}), **more_partition_args}
        _check_partition_args(partition, all_partition_args)  # a missing or misplaced argument fails here too
        self.partition_name: str = partition if isinstance(partition, str) else getattr(fn, "__name__", repr(fn))
        self.partition, self.seed, self.batch_size = partition, seed, batch_size
        self.shuffle, self.drop_last, self.order = shuffle, drop_last, order
        self.partition_args: dict[str, Any] = all_partition_args
        self.policy = check_policy(policy)  # a bad value fails before any worker is made or any data moves
        self.workers = make_workers(workers)
        self.prepare_data_per_node = datamodule.prepare_data_per_node
        self.allow_zero_length_dataloader_with_multiple_devices = (
            datamodule.allow_zero_length_dataloader_with_multiple_devices
        )
        for hook in _FORWARDED_HOOKS:
            if is_overridden(hook, datamodule):
                setattr(self, hook, getattr(datamodule, hook))
        federated = {"workers": [w.id for w in self.workers], "partition": self.partition_name, "seed": seed}
        federated.update(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, order=order)
        federated.update(policy=_policy_name(self.policy))
        hparams = {**datamodule.hparams_initial, "federated": {**federated, **self.partition_args}}
        # logged unless the inner datamodule saved its own and asked not to log them
        self.save_hyperparameters(hparams, logger=datamodule._log_hyperparams or not datamodule.hparams_initial)
        self._federated: FederatedDataset | None = None
        self._stats: PartitionStats | None = None
        self._loader_args: dict[str, Any] = {}

    # -- the trainer and everything else belong to the inner datamodule too ----------------------------------------
    @property  # type: ignore[override]
    def trainer(self) -> Any:
        return self.__dict__.get("_trainer")

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = trainer
        self.datamodule.trainer = trainer

    def __getattr__(self, name: str) -> Any:  # only reached for attributes this wrapper does not have
        inner = self.__dict__.get("datamodule")
        if name.startswith("_") or inner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(inner, name)

    @override
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    @override
    def setup(self, stage: str) -> None:
        """The inner ``setup(stage)``; for ``"fit"`` (or None) the first time, split the training data."""
        self.datamodule.setup(stage)
        if stage in ("fit", None) and self._federated is None:
            self._federate()

    @override
    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)

    @override
    def on_exception(self, exception: BaseException) -> None:
        self.datamodule.on_exception(exception)

    # -- the federated part ----------------------------------------------------------------------------------------
    def _federate(self) -> None:
        loader, dataset = _inner_train_data(self.datamodule)
        name = type(self.datamodule).__name__
        batch_size = self.batch_size or loader.batch_size
        if batch_size is None:
            raise FederatedConfigError(
                f"`batch_size=None` and `{name}.train_dataloader()` has no batch_size (it batches with a "
                "batch_sampler or not at all), and FederatedDataModule does not use that sampler: each worker "
                "batches its own shard. Pass FederatedDataModule(..., batch_size=32, drop_last=True): "
                "`drop_last=True` keeps every batch at that size, which a model with a fixed batch size (a "
                "stateful LSTM, a batch-sized hidden state) needs, since a worker's last batch is otherwise short."
            )
        collate_fn = loader.collate_fn if loader.batch_sampler is not None else default_collate  # not default_convert
        self.batch_size = batch_size  # read again by train_dataloader(): Lightning's batch-size tuner changes it
        self._loader_args = {"batch_size": batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                             "collate_fn": collate_fn, "seed": self.seed, "order": self.order}  # fmt: skip
        speed = [f"num_workers={loader.num_workers}"] if loader.num_workers else []
        speed += ["pin_memory=True"] if loader.pin_memory else []
        if speed:
            rank_zero_info(f"FederatedDataModule: {', '.join(speed)} of `{name}.train_dataloader()` do not apply.")
        custom = [] if isinstance(loader.sampler, (tud.RandomSampler, tud.SequentialSampler)) else [loader.sampler]
        custom += [loader.batch_sampler] if type(loader.batch_sampler) not in (tud.BatchSampler, type(None)) else []
        if custom:
            rank_zero_warn(
                f"FederatedDataModule ignores the {' and '.join(type(c).__name__ for c in custom)} of "
                f"`{name}.train_dataloader()`: each worker samples its own shard (shuffled when `shuffle=True`) in "
                f"batches of {batch_size}, its last batch short unless `drop_last=True` (pass "
                "FederatedDataModule(..., drop_last=True) if the model needs equal batch sizes)."
            )
        check_not_empty(len(dataset), f"{name}.train_dataloader().dataset")
        labels = self._labels(dataset)
        self._federated = federate(  # sets the policy on each worker before its shard arrives
            dataset, self.workers, self.partition, seed=self.seed, labels=labels, policy=self.policy,
            **self.partition_args,
        )  # fmt: skip
        self._stats = PartitionStats.of(self._federated, self.partition_name, self.seed)
        rank_zero_info(
            f"FederatedDataModule: {len(self._federated)} training samples of {name}, partition "
            f"{self.partition_name!r} (seed={self.seed}), over {len(self.workers)} workers:\n"
            + self._federated.summary()
        )
        log_dir = getattr(getattr(self.trainer, "logger", None), "log_dir", None)
        if log_dir is not None and self.trainer.is_global_zero:
            self.save_partition_heatmap(Path(log_dir) / HEATMAP_FILENAME)

    def _labels(self, dataset: Dataset) -> torch.Tensor | None:
        labels = getattr(self.datamodule, "train_labels", None)
        source = f"`{type(self.datamodule).__name__}.train_labels`"
        if callable(labels):
            labels = labels()
        if labels is None:
            labels, source = dataset_labels(dataset), "the train dataset's labels"
        if labels is not None and len(labels) != len(dataset):
            raise FederatedConfigError(
                f"{source} has {len(labels)} labels but the train dataset has {len(dataset)} samples: give one "
                "label per training sample, in dataset order."
            )
        if labels is None and is_label_based(get_partitioner(self.partition)):
            raise FederatedConfigError(
                f"`partition={self.partition_name!r}` needs the training labels, but {type(self.datamodule).__name__} "
                f"has no `train_labels` and its train dataset ({type(dataset).__name__}) has no `targets`, `labels` "
                "or TensorDataset label tensor. Add a `train_labels` property (one int class per sample) to the "
                "datamodule, or use `partition='iid'`." + float_labels_hint(dataset)
            )
        return labels

    @property
    def federated_dataset(self) -> FederatedDataset | None:
        """The training data split among the workers, after ``setup("fit")``; ``None`` before."""
        return self._federated

    @property
    def partition_stats(self) -> PartitionStats:
        """Samples and label counts per worker (after ``setup("fit")``)."""
        if self._stats is None:
            raise FederatedConfigError("No partition yet: call `setup('fit')` first (a Trainer does).")
        return self._stats

    def save_partition_heatmap(self, path: str | Path) -> Path | None:
        """Save the label-by-worker heatmap (PNG) at ``path``; ``None`` without matplotlib."""
        return self.partition_stats.save_heatmap(path)

    @override
    def train_dataloader(self) -> FederatedDataLoader:
        """A :class:`FederatedDataLoader` over the federated training data (splitting it first if needed)."""
        if self._federated is None:
            self.setup("fit")
        assert self._federated is not None
        return FederatedDataLoader(self._federated, **{**self._loader_args, "batch_size": self.batch_size})

    @classmethod
    @override
    def from_datasets(  # type: ignore[override]
        cls,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        predict_dataset: Dataset | None = None,
        *,
        workers: int | Sequence[Hashable | BaseWorker],
        partition: str | Callable[..., list[list[int]]] = "iid",
        batch_size: int = 32,
        val_batch_size: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> FederatedDataModule:
        """Federate ``train_dataset``; the other datasets are served locally in batches of ``val_batch_size``
        (default ``batch_size``). ``kwargs`` are the other arguments of :class:`FederatedDataModule`, ``policy``
        among them (the workers' data-access policy; ``None``, the default, keeps the strict one)."""
        ok = val_batch_size is None or (_is_int(val_batch_size) and val_batch_size >= 1)
        _check("val_batch_size", val_batch_size, ok, "pass an integer >= 1, or None to use `batch_size`")
        if hasattr(train_dataset, "__len__"):
            check_not_empty(len(train_dataset), "train_dataset")
        datasets = (train_dataset, val_dataset, test_dataset, predict_dataset)
        inner = _DatasetsDataModule(*datasets, batch_size=batch_size, eval_batch_size=val_batch_size or batch_size)
        return cls(inner, workers=workers, partition=partition, seed=seed, batch_size=batch_size, **kwargs)

    def __repr__(self) -> str:
        ids = [w.id for w in self.workers]
        return (
            f"FederatedDataModule({type(self.datamodule).__name__}, workers={ids}, partition={self.partition_name!r})"
        )


class _DatasetsDataModule(LightningDataModule):
    """The inner datamodule of :meth:`FederatedDataModule.from_datasets`: only the loaders of the datasets given."""

    def __init__(self, train: Dataset, val: Dataset | None, test: Dataset | None, predict: Dataset | None, *,
                 batch_size: int, eval_batch_size: int) -> None:  # fmt: skip
        super().__init__()
        self.train_dataset, self.batch_size, self.eval_batch_size = train, batch_size, eval_batch_size
        for hook, dataset in (("val_dataloader", val), ("test_dataloader", test), ("predict_dataloader", predict)):
            if dataset is not None:
                setattr(self, hook, functools.partial(self._eval_loader, dataset))

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.eval_batch_size)
