"""Clear errors for the vague cases: an empty dataset (``federate``, ``FederatedDataModule``, the partitioners) and
floating-point labels for a label partitioner; each names the argument, the value and the fix."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_fed as sy
from lightning_fed.data import FederatedDataModule, federate
from lightning_fed.data.partition import dirichlet, iid, partition_dataset_indices, quantity_skew, shards
from lightning_fed.exceptions import FederatedConfigError

EMPTY = TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


class EmptyDataModule(pl.LightningDataModule):
    """A user's datamodule whose training data failed to load (an empty folder)."""

    def __init__(self, shuffle: bool) -> None:
        super().__init__()
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(EMPTY, batch_size=4, shuffle=self.shuffle)


class FloatTargets(Dataset):
    """A dataset with a ``targets`` attribute of floats (as read from a CSV file)."""

    def __init__(self) -> None:
        self.targets = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(2), self.targets[i]


# -- an empty dataset ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_federate_names_an_empty_dataset(partition):
    worker = sy.VirtualWorker(id="chk-empty")
    args = {"alpha": 0.5} if partition == "dirichlet" else {}
    with pytest.raises(
        FederatedConfigError, match=r"`dataset` is empty \(len\(dataset\) == 0\): .*at least one sample"
    ):
        federate(EMPTY, [worker], partition, **args)
    assert worker.objects == {}


def test_from_datasets_names_an_empty_train_dataset_at_construction():
    with pytest.raises(FederatedConfigError, match=r"`train_dataset` is empty \(len\(train_dataset\) == 0\)"):
        FederatedDataModule.from_datasets(EMPTY, workers=2)


@pytest.mark.parametrize(
    ("shuffle", "match"),
    [
        (True, r"`EmptyDataModule.train_dataloader\(\)` failed because its training dataset is empty \(num_samples"),
        (False, r"`EmptyDataModule.train_dataloader\(\).dataset` is empty \(len\(EmptyDataModule.train_dataloader"),
    ],
)
def test_a_wrapped_datamodule_with_no_training_data_is_named_at_setup(shuffle, match):
    dm = FederatedDataModule(EmptyDataModule(shuffle), workers=2)
    with pytest.raises(FederatedConfigError, match=match):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("split", "match"),
    [
        (lambda: iid(0, 2), r"`num_samples=0`: the dataset to split is empty, so none of the 2 worker\(s\)"),
        (lambda: quantity_skew(0, 3), r"`num_samples=0`: the dataset to split is empty, so none of the 3 worker"),
        (lambda: dirichlet([], 2, alpha=0.5), r"`labels` is empty \(0 labels\): the dataset to split is empty"),
        (lambda: shards(np.array([], dtype=int), 2), r"`labels` is empty \(0 labels\): the dataset to split"),
        (lambda: partition_dataset_indices("iid", num_samples=0, num_workers=1), r"`num_samples=0`: the dataset"),
    ],
)
def test_partitioners_name_an_empty_dataset(split, match):
    with pytest.raises(FederatedConfigError, match=match):
        split()


# -- float labels -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("partition", "args"), [("dirichlet", {"alpha": 0.5}), ("shards", {"shards_per_worker": 1})])
def test_federate_says_a_tensor_datasets_labels_are_float(partition, args):
    data = TensorDataset(torch.zeros(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    match = (
        rf"Partitioner '{partition}' needs integer labels\. The dataset has labels, but the TensorDataset's last "
        r"tensor \(tensors\[1\]\) has dtype float32 \(floating point\).*`targets.long\(\)`.*`labels=`"
    )
    with pytest.raises(FederatedConfigError, match=match):
        federate(data, [sy.VirtualWorker(id="chk-f1"), sy.VirtualWorker(id="chk-f2")], partition, **args)


def test_federate_says_a_datasets_targets_are_float():
    with pytest.raises(FederatedConfigError, match=r"`dataset.targets` has dtype float64 \(floating point\)"):
        federate(FloatTargets(), [sy.VirtualWorker(id="chk-f3")], "dirichlet", alpha=1.0)


def test_float_labels_given_explicitly_as_whole_numbers_are_accepted():
    fed = federate(FloatTargets(), [sy.VirtualWorker(id="chk-f4")], "dirichlet", alpha=1.0, labels=[0.0, 1.0, 2.0, 1.0])
    assert fed.label_histogram.tolist() == [[1, 2, 1]]


def test_a_label_partitioner_names_the_dtype_of_fractional_labels():
    match = r"got dtype 'float64' with labels\[1\]=0\.5, which is not a whole number\. .*numpy.unique.*'iid'"
    with pytest.raises(FederatedConfigError, match=match):
        dirichlet(np.array([0.0, 0.5, 1.0, 1.0]), 2, alpha=1.0)


def test_the_datamodule_says_its_train_labels_are_float():
    data = TensorDataset(torch.zeros(8, 3), torch.tensor([0.0, 1.0] * 4))
    dm = FederatedDataModule.from_datasets(data, workers=2, partition="shards", shards_per_worker=1)
    match = r"needs the training labels.*has dtype float32 \(floating point\), and a label partitioner needs integer"
    with pytest.raises(FederatedConfigError, match=match):
        dm.setup("fit")
