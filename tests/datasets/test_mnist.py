"""Tests of MNISTDataModule on tiny MNIST files written by ``tests.helpers.mnist_files`` (no network, no real data)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import Subset
from torchvision.datasets import MNIST

from lightning_fed.datasets import MNIST_FILES, MNIST_MEAN, MNIST_STD, MNISTDataModule
from lightning_fed.exceptions import FederatedConfigError
from tests.helpers.mnist_files import read_idx, write_mnist_raw


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download path of torchvision fail loudly, so a test proves nothing reached for the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was touched")

    monkeypatch.setattr(MNIST, "download", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _ready(root: Path, **kwargs: object) -> MNISTDataModule:
    dm = MNISTDataModule(root, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("gz", [True, False])
def test_helper_writes_files_torchvision_reads(tmp_path: Path, gz: bool) -> None:
    raw = write_mnist_raw(tmp_path, gz=gz)
    assert raw == tmp_path / "MNIST" / "raw"
    suffix = ".gz" if gz else ""
    assert sorted(p.name for p in raw.iterdir()) == sorted(name.removesuffix(".gz") + suffix for name in MNIST_FILES)
    if gz:
        for name in MNIST_FILES:  # what torchvision's extraction produces
            torchvision.datasets.utils.extract_archive(str(raw / name), str(raw))
    train, test = MNIST(tmp_path, train=True), MNIST(tmp_path, train=False)
    assert (len(train), len(test)) == (64, 32)
    assert train.data.shape == (64, 28, 28) and train.data.dtype == torch.uint8
    assert train.targets.tolist() == [i % 10 for i in range(64)]
    assert torch.equal(train.data, torch.from_numpy(read_idx(raw / ("train-images-idx3-ubyte" + suffix))))
    assert not torch.equal(train.data[:32], test.data)  # the two splits use different seeds


def test_prepare_data_extracts_present_files_without_network(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path)
    dm = MNISTDataModule(tmp_path)
    dm.prepare_data()
    dm.prepare_data()  # idempotent
    for name in MNIST_FILES:
        assert (raw / name.removesuffix(".gz")).is_file()
    assert not list(raw.glob(".*tmp"))


def test_extracted_files_alone_are_enough(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path, gz=False)
    assert len(_ready(tmp_path).train_dataset) == 64


def test_train_batch_is_normalised(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path)
    dm = _ready(tmp_path)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    assert images.min() >= (0 - MNIST_MEAN) / MNIST_STD - 1e-5 and images.max() <= (1 - MNIST_MEAN) / MNIST_STD + 1e-5
    assert sorted(labels.tolist()) == sorted(i % 10 for i in range(64))  # one batch is the whole shuffled epoch

    pixels = torch.from_numpy(read_idx(raw / "train-images-idx3-ubyte.gz")[5]).float()
    image, label = dm.train_dataset[5]
    torch.testing.assert_close(image, ((pixels / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(0))
    assert label == 5


def test_images_equal_torchvisions_transform_bit_for_bit(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    dm = _ready(tmp_path)
    dm.setup("test")
    reference = MNIST(tmp_path, train=True, transform=dm.transform, download=False)  # ToTensor + Normalize per image
    for i in range(len(reference)):
        image, label = reference[i]
        mine, my_label = dm.train_dataset[i]
        assert torch.equal(mine, image) and int(my_label) == label
    assert type(dm.train_dataset).__name__ == "TensorDataset"  # what the federated loader gathers by indexing


def test_val_is_test_set_by_default(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    dm = _ready(tmp_path, test_batch_size=10)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (64, 32)
    assert [len(y) for _, y in dm.val_dataloader()] == [10, 10, 10, 2]


def test_val_split(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path)
    dm = _ready(tmp_path, val_size=10, seed=3)
    assert isinstance(dm.train_dataset, Subset) and isinstance(dm.val_dataset, Subset)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (54, 10)
    assert sorted(dm.train_dataset.indices + dm.val_dataset.indices) == list(range(64))
    assert sum(len(y) for _, y in dm.train_dataloader()) == 54

    labels = read_idx(raw / "train-labels-idx1-ubyte.gz")
    train_labels = dm.train_labels
    assert train_labels.dtype == torch.int64 and train_labels.shape == (54,)
    assert train_labels.tolist() == labels[dm.train_dataset.indices].tolist()
    assert train_labels.tolist() == [dm.train_dataset[i][1] for i in range(54)]

    same = _ready(tmp_path, val_size=10, seed=3)
    other = _ready(tmp_path, val_size=10, seed=4)
    assert same.val_dataset.indices == dm.val_dataset.indices
    assert other.val_dataset.indices != dm.val_dataset.indices


def test_train_labels_match_files(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path, num_train=50)
    dm = MNISTDataModule(tmp_path)
    dm.prepare_data()
    labels = dm.train_labels  # sets up "fit" on first use
    assert labels.dtype == torch.int64 and labels.ndim == 1
    assert np.array_equal(labels.numpy(), read_idx(raw / "train-labels-idx1-ubyte.gz"))
    labels[0] = 7  # a copy: changing it leaves the data set alone
    assert dm.train_dataset.targets[0] == 0


def test_test_and_predict_loaders(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    dm = MNISTDataModule(tmp_path, test_batch_size=12)
    dm.prepare_data()
    dm.setup("test")
    dm.setup("predict")
    assert dm.train_dataset is None and len(dm.test_dataset) == 32
    assert [len(y) for _, y in dm.test_dataloader()] == [12, 12, 8]
    assert [len(y) for _, y in dm.predict_dataloader()] == [12, 12, 8]
    assert next(iter(dm.test_dataloader()))[1].tolist() == [i % 10 for i in range(12)]  # not shuffled


def test_train_order_is_seeded(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)

    def epoch(dm: MNISTDataModule) -> list[int]:
        return [int(i) for _, y in dm.train_dataloader() for i in y]

    def first_pixels(dm: MNISTDataModule) -> torch.Tensor:
        return next(iter(dm.train_dataloader()))[0]

    a, b, c = (_ready(tmp_path, batch_size=8, seed=s) for s in (0, 0, 1))
    assert epoch(a) == epoch(b) == epoch(a)  # each new loader replays the order
    assert torch.equal(first_pixels(a), first_pixels(b))
    assert epoch(a) != epoch(c)
    loader = a.train_dataloader()
    assert [int(i) for _, y in loader for i in y] != [int(i) for _, y in loader for i in y]  # epochs differ


def test_offline_without_files_names_files_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: MNIST) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network here")

    monkeypatch.setattr(MNIST, "download", offline)
    dm = MNISTDataModule(tmp_path / "data")
    with pytest.raises(FederatedConfigError) as info:
        dm.prepare_data()
    message = str(info.value)
    for name in MNIST_FILES:
        assert name in message
    assert repr(str(tmp_path / "data" / "MNIST" / "raw")) in message
    assert "no network here" in message and "RuntimeError" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_download_false_without_files(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = MNISTDataModule(tmp_path, download=False)
    with pytest.raises(FederatedConfigError, match="download=False") as info:
        dm.prepare_data()
    message = str(info.value)
    assert "missing from " + repr(str(raw)) + ": t10k-labels-idx1-ubyte.gz." in message
    assert all(name in message for name in MNIST_FILES)


def test_setup_before_prepare_data(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    with pytest.raises(FederatedConfigError, match=r"Call `prepare_data\(\)` first"):
        MNISTDataModule(tmp_path).setup("fit")


def test_damaged_archive(tmp_path: Path, no_network: None) -> None:
    raw = write_mnist_raw(tmp_path)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(FederatedConfigError, match="damaged"):
        MNISTDataModule(tmp_path).prepare_data()
    assert not (raw / "train-images-idx3-ubyte").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"`batch_size=0` is not valid: pass an integer >= 1"),
        ({"batch_size": 2.5}, r"`batch_size=2.5` is not valid"),
        ({"test_batch_size": -1}, r"`test_batch_size=-1` is not valid"),
        ({"val_size": -5}, r"`val_size=-5` is not valid: pass 0 to validate on the MNIST test set"),
        ({"num_workers": -1}, r"`num_workers=-1` is not valid"),
        ({"seed": "0"}, r"`seed='0'` is not valid: pass an integer"),
        ({"download": "yes"}, r"`download='yes'` is not valid: pass True or False"),
        ({"root": None}, r"`root=None` is not valid"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_too_large(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    dm = MNISTDataModule(tmp_path, val_size=64)
    dm.prepare_data()
    with pytest.raises(FederatedConfigError, match=r"`val_size=64` is not valid: the training set has only 64 images"):
        dm.setup("fit")
    with pytest.raises(FederatedConfigError, match=r"`stage='train'` is not valid"):
        dm.setup("train")


def test_hyperparameters_saved(tmp_path: Path) -> None:
    dm = MNISTDataModule(tmp_path, batch_size=16, val_size=4, seed=7)
    assert dict(dm.hparams) == {
        "root": tmp_path,
        "batch_size": 16,
        "test_batch_size": 1000,
        "val_size": 4,
        "download": True,
        "num_workers": 0,
        "seed": 7,
        "pin_memory": False,
    }


class _TinyModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(28 * 28, 10)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_runs_the_hooks(tmp_path: Path, no_network: None) -> None:
    write_mnist_raw(tmp_path)
    dm = MNISTDataModule(tmp_path, batch_size=16, val_size=16)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyModel(), datamodule=dm)
    assert trainer.num_training_batches == 3 and "val_loss" in trainer.callback_metrics
