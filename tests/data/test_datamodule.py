"""Tests of ``FederatedDataModule``: workers, forwarding to the inner datamodule, MNIST, the partition shown, errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

import lightning_fed as sy
from lightning_fed.data import FederatedDataLoader, FederatedDataModule, PartitionStats
from lightning_fed.datasets import MNISTDataModule
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers import PointerTensor
from tests.helpers.mnist_files import write_mnist_raw

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def labelled(n: int = 40, classes: int = 4) -> TensorDataset:
    return TensorDataset(torch.randn(n, 3), torch.arange(n) % classes)


class Inner(LightningDataModule):
    """A datamodule that records what reaches it."""

    num_classes = 4

    def __init__(self, dataset: Any = None, loader_kwargs: dict | None = None) -> None:
        super().__init__()
        self.dataset = labelled() if dataset is None else dataset
        self.loader_kwargs = {"batch_size": 5, **(loader_kwargs or {})}
        self.calls: list[str] = []
        self.state = {"step": 0}

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")

    def train_dataloader(self) -> Any:
        self.calls.append("train_dataloader")
        return DataLoader(self.dataset, **self.loader_kwargs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=7)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = dict(state_dict)

    def on_exception(self, exception: BaseException) -> None:
        self.calls.append(f"on_exception:{exception}")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return ("moved", batch)


# -- workers -------------------------------------------------------------------------------------------------------
def test_workers_from_a_count_ids_or_objects_are_made_once():
    alice = sy.VirtualWorker(id="alice")
    assert [w.id for w in FederatedDataModule(Inner(), workers=3).workers] == ["worker_0", "worker_1", "worker_2"]
    dm = FederatedDataModule(Inner(), workers=[alice, "bob", 7])
    assert dm.workers[0] is alice and [w.id for w in dm.workers] == ["alice", "bob", 7]
    before = list(dm.workers)
    dm.setup("fit")
    assert dm.workers == before and dm.federated_dataset.workers == before
    assert dm.train_dataloader().workers == before


@pytest.mark.parametrize(
    ("workers", "match"),
    [
        (0, r"`workers=0` is not valid: pass a number of workers >= 1"),
        ([], r"`workers=\[\]` is empty"),
        ("alice", r"`workers='alice'` \(str\) is not valid: .*workers=\['alice'\]"),
        (2.0, r"`workers=2.0` \(float\) is not valid: pass a number of workers, a list of ids"),
        ({"a", "b"}, r"\(set\) is not valid"),
        (["a", None], r"`workers\[1\]=None` \(NoneType\) is not valid: each entry is a worker id"),
        (["a", "b", "a"], r"`workers` has duplicate ids \['a'\]"),
        ([sy.me], r"`workers\[0\]` is the local worker `me`"),
    ],
)
def test_bad_workers(workers, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedDataModule(Inner(), workers=workers)


# -- forwarding ----------------------------------------------------------------------------------------------------
def test_everything_but_the_train_data_is_the_inner_datamodules():
    inner = Inner()
    dm = FederatedDataModule(inner, workers=2)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("fit")  # federated once
    dm.setup("validate")
    dm.teardown("fit")
    dm.on_exception(ValueError("boom"))
    fit = ["setup:fit", "train_dataloader", "setup:fit"]
    assert inner.calls == ["prepare_data", *fit, "setup:validate", "teardown:fit", "on_exception:boom"]
    assert dm.val_dataloader().batch_size == 7
    assert dm.transfer_batch_to_device(1, torch.device("cpu"), 0) == ("moved", 1)
    assert dm.num_classes == 4  # unknown public attributes are the inner datamodule's
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dm.nothing
    dm.load_state_dict({"step": 3})
    assert inner.state == {"step": 3} and dm.state_dict() == {"step": 3}
    trainer = Trainer(logger=False)
    dm.trainer = trainer
    assert inner.trainer is trainer


def test_hooks_the_inner_datamodule_lacks_stay_undefined_for_lightning():
    dm = FederatedDataModule(LightningDataModule.from_datasets(labelled(), batch_size=4), workers=2)
    for hook in ("val_dataloader", "test_dataloader", "predict_dataloader", "transfer_batch_to_device"):
        assert not is_overridden(hook, dm)  # no validation loop; a LightningModule's transfer hook keeps precedence
    assert is_overridden("train_dataloader", dm)
    assert is_overridden("val_dataloader", FederatedDataModule(Inner(), workers=2))


def test_from_datasets_federates_train_and_serves_the_rest_locally():
    train, val, test = labelled(40), labelled(9), labelled(11)
    dm = FederatedDataModule.from_datasets(train, val, test, workers=["a", "b"], batch_size=6, val_batch_size=4)
    assert not is_overridden("predict_dataloader", dm)
    dm.setup("fit")
    assert dm.federated_dataset.lengths == {"a": 20, "b": 20}
    loader = dm.train_dataloader()
    assert isinstance(loader, FederatedDataLoader) and loader.batch_size == 6 and len(loader) == 8
    val_loader, test_loader = dm.val_dataloader(), dm.test_dataloader()
    assert val_loader.dataset is val and test_loader.dataset is test and val_loader.batch_size == 4
    assert [len(y) for _, y in val_loader] == [4, 4, 1]
    assert dm.hparams["federated"] == {
        "workers": ["a", "b"],
        "partition": "iid",
        "seed": 0,
        "batch_size": 6,
        "shuffle": True,
        "drop_last": False,
        "order": "sequential",
        "policy": None,
    }


# -- MNIST ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("gz", "partition", "args"), [(False, "iid", {}), (True, "dirichlet", {"alpha": 0.5})])
def test_mnist_datamodule_federated(tmp_path, gz, partition, args):
    write_mnist_raw(tmp_path, num_train=60, num_test=20, gz=gz)
    mnist = MNISTDataModule(tmp_path, batch_size=16, test_batch_size=10)
    dm = FederatedDataModule(mnist, workers=3, partition=partition, seed=2, **args)
    dm.prepare_data()
    dm.setup("fit")
    stats = dm.partition_stats
    assert sum(stats.samples.values()) == 60 and stats.num_classes == 10
    assert stats.histogram.sum(axis=0).tolist() == np.bincount(mnist.train_labels.numpy()).tolist()
    loader = dm.train_dataloader()
    assert loader.batch_size == 16  # the inner loader's
    assert len(loader) == sum(-(-n // 16) for n in stats.samples.values())
    assert sy.me.objects == {}
    for data, target in loader:
        assert type(data) is PointerTensor and type(target) is PointerTensor
        assert data.shape[1:] == (1, 28, 28) and data.dtype == torch.float32 and target.dtype == torch.int64
        assert sy.me.objects == {}
    val = dm.val_dataloader()
    assert isinstance(val, DataLoader) and len(val.dataset) == 20 and val.batch_size == 10
    assert len(dm.test_dataloader().dataset) == 20


def test_train_labels_of_the_inner_datamodule_are_preferred():
    class WithLabels(Inner):
        @property
        def train_labels(self) -> torch.Tensor:
            return torch.arange(40) % 2  # the dataset's own labels cycle through 4 classes

    dm = FederatedDataModule(WithLabels(), workers=2, partition="shards", shards_per_worker=1)
    dm.setup("fit")
    assert sorted(dm.partition_stats.label_counts.values()) == [[0, 20], [20, 0]]  # 2 classes, not 4


# -- the visible partition -----------------------------------------------------------------------------------------
def test_partition_stats_table_and_heatmap(tmp_path, caplog):
    dm = FederatedDataModule(Inner(), workers=["a", "b"], partition="dirichlet", partition_args={"alpha": 1.0})
    with pytest.raises(FederatedConfigError, match=r"No partition yet: call `setup\('fit'\)` first"):
        dm.partition_stats
    assert dm.federated_dataset is None
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    stats = dm.partition_stats
    assert isinstance(stats, PartitionStats) and (stats.partition, stats.seed) == ("dirichlet", 0)
    assert list(stats.label_counts) == ["a", "b"] and stats.histogram.sum() == 40
    assert "40 training samples of Inner, partition 'dirichlet' (seed=0), over 2 workers" in caplog.text
    assert dm.federated_dataset.summary() in caplog.text
    path = dm.save_partition_heatmap(tmp_path / "sub" / "heat.png")
    assert path == tmp_path / "sub" / "heat.png" and path.read_bytes()[:8] == PNG_MAGIC


def test_heatmap_without_labels_and_without_matplotlib(tmp_path, monkeypatch, caplog):
    unlabelled = TensorDataset(torch.randn(10, 2), torch.randn(10))
    dm = FederatedDataModule(Inner(unlabelled), workers=2)
    dm.setup("fit")
    assert dm.partition_stats.label_counts is None and dm.partition_stats.histogram is None
    assert dm.save_partition_heatmap(tmp_path / "counts.png").read_bytes()[:8] == PNG_MAGIC
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with caplog.at_level(logging.INFO):
        assert dm.save_partition_heatmap(tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert "matplotlib is not installed: the partition heatmap is skipped" in caplog.text


class PointerProbe(LightningModule):
    """Records the batches Lightning hands to training_step (no optimizer: there is nothing to train here)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str, Any, int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        self.seen.append((self.current_epoch, type(x).__name__, x.location.id, int((x[:, 0] * 0).shape[0])))

    def configure_optimizers(self) -> None:
        return None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_trainer_logs_the_table_and_saves_the_heatmap_in_its_log_dir(tmp_path, caplog):
    dm = FederatedDataModule.from_datasets(labelled(30), workers=2, batch_size=4, partition="dirichlet", alpha=2.0)
    model = PointerProbe()
    trainer = Trainer(max_epochs=2, logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=dm)
    assert "training samples of _DatasetsDataModule, partition 'dirichlet'" in caplog.text
    log_dir = Path(trainer.logger.log_dir)
    assert (log_dir / "partition_heatmap.png").read_bytes()[:8] == PNG_MAGIC
    assert "federated:" in (log_dir / "hparams.yaml").read_text()
    assert {kind for _, kind, _, _ in model.seen} == {"PointerTensor"}
    per_epoch = len(dm.train_dataloader())
    assert len(model.seen) == 2 * per_epoch
    assert sy.me.objects == {}


# -- bad inputs ----------------------------------------------------------------------------------------------------
class NotALoader(Inner):
    def train_dataloader(self) -> Any:
        return [DataLoader(self.dataset)]


class Stream(IterableDataset):
    def __iter__(self):
        return iter(torch.randn(4, 2))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FederatedDataModule(Inner(labelled(3)), workers=4), r"`num_workers=4` is more than .* \(3\)"),
        (lambda: FederatedDataModule(Inner(), workers=2, partition="dirichlet", alpha=0), r"`alpha=0` is not valid"),
        (lambda: FederatedDataModule(Inner(), workers=3, partition="shards"), r"cannot be cut into .* = 6` equal"),
        (
            lambda: FederatedDataModule(
                Inner(TensorDataset(torch.randn(8, 2))), workers=2, partition="dirichlet", alpha=0.5
            ),
            r"`partition='dirichlet'` needs the training labels, but Inner has no `train_labels`.*partition='iid'",
        ),
        (lambda: FederatedDataModule(NotALoader(), workers=2), r"returned list, not a torch DataLoader with a dataset"),
        (lambda: FederatedDataModule(LightningDataModule(), workers=2), r"has no `train_dataloader\(\)`"),
        (lambda: FederatedDataModule(Inner(Stream(), {"batch_size": 2}), workers=2), r"is an IterableDataset"),
        (
            lambda: FederatedDataModule(Inner(loader_kwargs={"batch_size": None}), workers=2),
            r"`batch_size=None` and `Inner.train_dataloader\(\)` has no batch_size.*batch_size=32, drop_last=True\)",
        ),
    ],
)
def test_bad_data_fails_at_setup_naming_the_fix(make, match):
    dm = make()
    with pytest.raises(FederatedConfigError, match=match):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"datamodule": DataLoader(labelled())}, r"is not a LightningDataModule instance.*from_datasets"),
        ({"partition": "kmeans"}, r"`partition='kmeans'` is not a known partitioner"),
        ({"seed": -1}, r"`seed=-1` is not valid: pass an integer >= 0"),
        ({"batch_size": 0}, r"`batch_size=0` is not valid"),
        ({"shuffle": "yes"}, r"`shuffle='yes'` is not valid: pass True or False"),
        ({"order": "random"}, r"`order='random'` is not valid"),
        ({"partition_args": [1]}, r"`partition_args=\[1\]` is not valid: pass a dict"),
        (
            {"partition_args": {"alpha": 1}, "alpha": 2},
            r"\['alpha'\] given twice \(as a parameter, in `partition_args`",
        ),
        ({"partition_args": {"beta": 1}, "beta": 2}, r"\['beta'\] given twice"),
        ({"partition": "iid", "alpha": 0.3}, r"Partitioner 'iid' does not take alpha=0.3: remove it"),
        (
            {"partition": "dirichlet"},
            r"Partitioner 'dirichlet' needs `alpha`, which was not given: pass it, e.g. alpha=",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    kwargs = {"datamodule": Inner(), "workers": 2, **kwargs}
    with pytest.raises(FederatedConfigError, match=match):
        FederatedDataModule(**kwargs)


def test_ignored_loader_settings_are_named(caplog):
    weights = WeightedRandomSampler(torch.ones(40), 40)
    dm = FederatedDataModule(Inner(loader_kwargs={"sampler": weights, "pin_memory": True}), workers=2)
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match=r"ignores the WeightedRandomSampler of `Inner"):
        dm.setup("fit")
    assert "pin_memory=True of `Inner.train_dataloader()` do not apply" in caplog.text
    pairs = Pairs()
    dm = FederatedDataModule(Inner(loader_kwargs={"batch_sampler": pairs, "batch_size": 1}), workers=2, batch_size=4)
    with pytest.warns(UserWarning, match=r"ignores the Pairs of.*in batches of 4.*drop_last=True"):  # a user's own
        dm.setup("fit")
    assert dm.train_dataloader().batch_size == 4


def test_drop_last_gives_every_worker_batch_the_same_size():
    # 40 samples over 3 workers (14, 13, 13) in batches of 4: without drop_last each worker ends on a short batch,
    # which a model whose state has the batch size (Lightning's LSTM demo) cannot take
    pairs = Pairs()
    loose = FederatedDataModule(Inner(loader_kwargs={"batch_sampler": pairs, "batch_size": 1}), workers=3, batch_size=4)
    strict = FederatedDataModule(
        Inner(loader_kwargs={"batch_sampler": pairs, "batch_size": 1}), workers=3, batch_size=4, drop_last=True
    )
    with pytest.warns(UserWarning, match="drop_last=True"):
        loose_sizes = {int(data.shape[0]) for data, _ in loose.train_dataloader()}
    with pytest.warns(UserWarning, match="ignores the Pairs"):
        strict_batches = [int(data.shape[0]) for data, _ in strict.train_dataloader()]
    assert loose_sizes == {4, 2, 1}
    assert set(strict_batches) == {4} and len(strict_batches) == 3 + 3 + 3


class Pairs:
    """A batch sampler of its own kind."""

    def __iter__(self):
        return iter([[i, i + 1] for i in range(0, 40, 2)])

    def __len__(self) -> int:
        return 20
