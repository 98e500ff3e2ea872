"""MNIST as a LightningDataModule, on torchvision's own MNIST loader, that works offline once the files are there.

:class:`MNISTDataModule` reads the four official IDX files from ``<root>/MNIST/raw/`` (the layout
``torchvision.datasets.MNIST`` uses) and normalises images with the usual MNIST mean and standard deviation, as
the PyTorch MNIST example does. ``prepare_data()`` extracts the ``.gz`` files itself when they are present, so
nothing touches the network then (torchvision would check their md5 against the official one and try to download
on a mismatch); it calls torchvision's download only for files that are missing, and turns a failed download
(no network) into a :class:`~lightning_fed.exceptions.FederatedConfigError` that says which files to put where.

``train_labels`` gives the training labels as a tensor without decoding any image, which is what the federated
partitioners need.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import transforms
from torchvision.datasets import MNIST
from typing_extensions import override

from lightning_fed.exceptions import FederatedConfigError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_STAGES = ("fit", "validate", "test", "predict")


def normalized_tensors(mnist: MNIST) -> TensorDataset:
    """``mnist``'s images as one float tensor ``(N, 1, 28, 28)``, scaled to [0, 1] and normalised once, with its labels:
    the values ``ToTensor()`` + ``Normalize(MNIST_MEAN, MNIST_STD)`` give image by image (the same float32 operations
    in the same order), without decoding an image per sample in every epoch. ``targets`` is kept, so labels are read
    without touching images.

    Example:
        >>> import torch
        >>> class Tiny:  # what torchvision's MNIST holds: uint8 images and int64 labels
        ...     data, targets = torch.tensor([[[0, 255]]], dtype=torch.uint8), torch.tensor([7])
        >>> ds = normalized_tensors(Tiny())
        >>> ds[0][0].shape, round(float(ds[0][0][0, 0, 1]), 4), int(ds[0][1]), ds.targets.tolist()
        (torch.Size([1, 1, 2]), 2.8215, 7, [7])
    """
    images = mnist.data.to(torch.float32).div(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    targets = mnist.targets.to(torch.long)
    dataset = TensorDataset(images, targets)
    dataset.targets = targets  # type: ignore[attr-defined]
    return dataset


def _check_int(name: str, value: object, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FederatedConfigError(f"`{name}={value!r}` is not valid: {fix}")


def _extract_gz(archive: Path, target: Path) -> None:
    """Decompress ``archive`` into ``target`` through a temporary file, so a crash never leaves half a file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    except (OSError, EOFError) as err:
        raise FederatedConfigError(
            f"Could not extract {str(archive)!r} ({type(err).__name__}: {err}): the file is damaged. "
            "Delete it and put a good copy in its place."
        ) from err
    finally:
        if tmp.exists():
            tmp.unlink()


class MNISTDataModule(LightningDataModule):
    """The MNIST digits (60000 training, 10000 test images), normalised with ``MNIST_MEAN`` and ``MNIST_STD``.

    Args:
        root: data folder; the files live in ``<root>/MNIST/raw/`` (the layout of ``torchvision.datasets.MNIST``).
        batch_size: batch size of the training loader.
        test_batch_size: batch size of the validation, test and predict loaders.
        val_size: number of training images held out, with a split seeded by ``seed``, as the validation set.
            With 0 (the default) the validation set is the MNIST test set, as in the PyTorch MNIST example.
        download: whether ``prepare_data()`` may download missing files.
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the validation split and of the training loader's shuffling.
        pin_memory: ``DataLoader`` ``pin_memory``.

    Example:
        >>> from lightning_fed.datasets import MNISTDataModule
        >>> dm = MNISTDataModule(root="data", batch_size=32, val_size=5000)
        >>> dm.hparams.batch_size, dm.hparams.val_size, dm.hparams.download
        (32, 5000, True)
        >>> dm.raw_folder.as_posix()
        'data/MNIST/raw'
        >>> MNISTDataModule(batch_size=0)
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `batch_size=0` is not valid: pass an integer >= 1.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "data",
        batch_size: int = 64,
        test_batch_size: int = 1000,
        val_size: int = 0,
        download: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(root, (str, os.PathLike)):
            raise FederatedConfigError(f"`root={root!r}` is not valid: pass the data folder as a str or a path.")
        _check_int("batch_size", batch_size, 1, "pass an integer >= 1.")
        _check_int("test_batch_size", test_batch_size, 1, "pass an integer >= 1.")
        _check_int(
            "val_size",
            val_size,
            0,
            "pass 0 to validate on the MNIST test set, or the number of training images to hold out.",
        )
        _check_int("num_workers", num_workers, 0, "pass 0 to load in the main process, or a positive integer.")
        _check_int("seed", seed, -(2**63), "pass an integer.")
        for name, value in (("download", download), ("pin_memory", pin_memory)):
            if not isinstance(value, bool):
                raise FederatedConfigError(f"`{name}={value!r}` is not valid: pass True or False.")
        # explicit: the frame inspection of a bare save_hyperparameters() would pick up an enclosing __init__'s
        # arguments when this datamodule is built inside another one (FederatedMNISTDataModule does that)
        self.save_hyperparameters(
            {"root": root, "batch_size": batch_size, "test_batch_size": test_batch_size, "val_size": val_size,
             "download": download, "num_workers": num_workers, "seed": seed, "pin_memory": pin_memory}
        )  # fmt: skip
        self.root = Path(root)
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self._test_set: TensorDataset | None = None

    @property
    def raw_folder(self) -> Path:
        """``<root>/MNIST/raw``, where the four IDX files (``MNIST_FILES``, gzipped or extracted) belong."""
        return self.root / "MNIST" / "raw"

    def _legacy_exists(self) -> bool:
        processed = self.root / "MNIST" / "processed"
        return (processed / MNIST.training_file).is_file() and (processed / MNIST.test_file).is_file()

    def _missing_files(self) -> list[str]:
        """The names in ``MNIST_FILES`` whose extracted file (what torchvision reads) is not in ``raw_folder``."""
        return [name for name in MNIST_FILES if not (self.raw_folder / name.removesuffix(".gz")).is_file()]

    def _missing_message(self, missing: list[str], why: str) -> str:
        folder = os.path.abspath(self.raw_folder)
        return (
            f"MNIST files missing from {folder!r}: {', '.join(missing)}. {why} "
            f"Fix: put the four files {', '.join(MNIST_FILES)} (from any MNIST mirror, e.g. {MNIST.mirrors[0]}) "
            f"into the folder {folder!r} (that is <root>/MNIST/raw with root={str(self.root)!r}); "
            "they are then extracted there without any network access."
        )

    @override
    def prepare_data(self) -> None:
        """Make the four extracted IDX files present in ``raw_folder``, downloading only what is missing."""
        if self._legacy_exists():
            return
        for name in MNIST_FILES:
            target = self.raw_folder / name.removesuffix(".gz")
            if not target.is_file() and (self.raw_folder / name).is_file():
                _extract_gz(self.raw_folder / name, target)
        missing = self._missing_files()
        if not missing:
            return
        if not self.hparams.download:
            raise FederatedConfigError(self._missing_message(missing, "`download=False`, so they were not downloaded."))
        try:
            MNIST(self.root, train=False, download=True)  # downloads and extracts all four files
        except Exception as err:
            raise FederatedConfigError(
                self._missing_message(missing, f"Downloading them failed ({type(err).__name__}: {err}).")
            ) from err

    def _load(self, train: bool) -> TensorDataset:
        if not self._legacy_exists() and (missing := self._missing_files()):
            raise FederatedConfigError(
                self._missing_message(
                    missing, "Call `prepare_data()` first (a Trainer does) to extract or download them."
                )
            )
        return normalized_tensors(MNIST(self.root, train=train, download=False))

    def _get_test_set(self) -> TensorDataset:
        if self._test_set is None:
            self._test_set = self._load(train=False)
        return self._test_set

    @override
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``; None: all)."""
        if stage is not None and stage not in _STAGES:
            raise FederatedConfigError(f"`stage={stage!r}` is not valid: pass one of {_STAGES} or None.")
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            full = self._load(train=True)
            val_size = self.hparams.val_size
            if val_size >= len(full):
                raise FederatedConfigError(
                    f"`val_size={val_size!r}` is not valid: the training set has only {len(full)} images. Pass 0 to "
                    f"validate on the MNIST test set, or a value from 1 to {len(full) - 1}."
                )
            if val_size == 0:
                self.train_dataset, self.val_dataset = full, self._get_test_set()
            else:
                generator = torch.Generator().manual_seed(self.hparams.seed)
                self.train_dataset, self.val_dataset = random_split(
                    full, [len(full) - val_size, val_size], generator=generator
                )
        if stage in (None, "test"):
            self.test_dataset = self._get_test_set()
        if stage in (None, "predict"):
            self.predict_dataset = self._get_test_set()

    @property
    def train_labels(self) -> torch.Tensor:
        """The training labels (without the held-out validation images) as a 1-D int64 tensor, in dataset order.

        Read from the dataset's ``targets``, so no image is decoded; calls ``setup("fit")`` first if needed.
        """
        if self.train_dataset is None:
            self.setup("fit")
        dataset = self.train_dataset
        if isinstance(dataset, Subset):
            indices = torch.as_tensor(dataset.indices, dtype=torch.long)
            return dataset.dataset.targets[indices].to(torch.long)
        return dataset.targets.to(torch.long, copy=True)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; each new loader replays the same order for the same ``seed``."""
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, self.hparams.test_batch_size)

    @override
    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset, self.hparams.test_batch_size)

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            self.setup("predict")
        return self._loader(self.predict_dataset, self.hparams.test_batch_size)
