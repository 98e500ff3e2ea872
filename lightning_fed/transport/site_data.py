"""A site's own datasets: named in the site's configuration, loaded from the site's disk, held as tensors.

Each dataset becomes two tensors in the site worker's store, both tagged with the dataset's name (``mnist-train``
and ``#mnist-train``) and the spec's ``tags``: the inputs (also tagged ``#data``) and the targets (``#target``), so
``remote.search("mnist-train")`` finds both and ``remote.search("mnist-train", "#data")`` the inputs only.

A dataset is either an MNIST folder (the torchvision layout, ``<path>/MNIST/raw/*-ubyte[.gz]``; images scaled to
``[0, 1]`` and normalized with MNIST's mean and standard deviation, as :class:`~lightning_fed.datasets.MNISTDataModule`
does) or a class the site has installed: a ``torch.utils.data.Dataset`` or a ``LightningDataModule`` given by its
import path and keyword arguments, whose items are ``(input, target)`` pairs. The site's configuration names them; the
server never sends a class name, a path or code.

Configuration (JSON, or TOML on Python 3.11+)::

    {"datasets": {
        "mnist-train": {"mnist": "/data/school-a", "split": "train", "tags": ["#school-a"]},
        "survey": {"class": "my_site.data.SurveyDataset", "kwargs": {"root": "/data/survey"}}}}

Example:
    >>> spec = parse_data_flag("mnist-train=/data/school-a")
    >>> spec.name, spec.mnist, spec.split
    ('mnist-train', '/data/school-a', 'train')
    >>> parse_data_flag("mnist-train")
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: `--data mnist-train` is not valid: pass NAME=PATH, ...
"""

from __future__ import annotations

import gzip
import importlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_fed.exceptions import FederatedConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a site: ``name``, where it comes from (``mnist`` folder or ``target`` class path with
    ``kwargs``), its ``split``, extra ``tags`` and a ``description``."""

    name: str
    mnist: str | None = None
    target: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"
    tags: tuple[str, ...] = ()
    description: str | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise FederatedConfigError(f"dataset name {self.name!r} is not valid: use a word such as 'mnist-train'.")
        if (self.mnist is None) == (self.target is None):
            raise FederatedConfigError(
                f"{where} needs exactly one source: 'mnist' (an MNIST folder) or 'class' (a Dataset or "
                f"LightningDataModule import path), got mnist={self.mnist!r}, class={self.target!r}."
            )
        if self.split not in _SPLITS:
            raise FederatedConfigError(f"{where}: `split={self.split!r}` is not valid: pass one of {list(_SPLITS)}.")
        if self.mnist is not None and self.split == "val":
            raise FederatedConfigError(f"{where}: an MNIST folder has the splits 'train' and 'test', not 'val'.")
        if not isinstance(self.tags, tuple) or not all(isinstance(t, str) for t in self.tags):
            raise FederatedConfigError(f"{where}: `tags={self.tags!r}` is not valid: pass a list of strings.")


def parse_data_flag(text: str) -> DatasetSpec:
    """``--data NAME=PATH``: the training split of the MNIST folder ``PATH`` as dataset ``NAME``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise FederatedConfigError(
            f"`--data {text}` is not valid: pass NAME=PATH, e.g. --data mnist-train=/data/school-a (an MNIST "
            "folder); other datasets and splits go in a --config file."
        )
    return DatasetSpec(name=name, mnist=path)


def specs_from_config(config: Mapping[str, Any], source: str = "the configuration") -> list[DatasetSpec]:
    """The dataset specs of a site configuration (see the module docstring)."""
    datasets = config.get("datasets", {})
    if not isinstance(datasets, Mapping):
        raise FederatedConfigError(f"{source}: 'datasets' must be a table of name -> dataset, got {datasets!r}.")
    specs = []
    known = {"mnist", "class", "kwargs", "split", "tags", "description"}
    for name, entry in datasets.items():
        if not isinstance(entry, Mapping) or set(entry) - known:
            unknown = sorted(set(entry) - known) if isinstance(entry, Mapping) else entry
            raise FederatedConfigError(
                f"{source}: dataset {name!r} has unknown settings {unknown!r}: use {sorted(known)}."
            )
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise FederatedConfigError(f"{source}: dataset {name!r}: 'kwargs' must be a table, got {kwargs!r}.")
        specs.append(DatasetSpec(name=name, mnist=entry.get("mnist"), target=entry.get("class"), kwargs=dict(kwargs),
                                 split=entry.get("split", "train"), tags=tuple(entry.get("tags", ())),
                                 description=entry.get("description")))  # fmt: skip
    return specs


def load_config(path: str | Path) -> dict[str, Any]:
    """A site configuration file: ``.json``, or ``.toml`` (Python 3.11+)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise FederatedConfigError(f"`--config {path}` cannot be read: {err}.") from None
    try:
        if file.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ImportError:
        raise FederatedConfigError(f"`--config {path}`: TOML needs Python 3.11+; write the file as JSON.") from None
    except ValueError as err:
        raise FederatedConfigError(f"`--config {path}` is not valid {file.suffix[1:] or 'JSON'}: {err}.") from None


def _mnist_raw(path: Path) -> Path:
    """The folder holding the IDX files: ``path/MNIST/raw``, ``path/raw`` or ``path`` itself."""
    for candidate in (path / "MNIST" / "raw", path / "raw", path):
        if candidate.is_dir() and any(candidate.glob("*-ubyte*")):
            return candidate
    return path / "MNIST" / "raw"


def read_idx(path: Path) -> torch.Tensor:
    """A uint8 IDX file (``.gz`` or not) as a tensor; its header gives the shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, kind, dims = struct.unpack_from(">HBB", data)
    if zero != 0 or kind != 0x08 or not 1 <= dims <= 3:
        raise ValueError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack_from(f">{dims}I", data, 4)
    offset = 4 + 4 * dims
    if len(data) - offset != math.prod(shape):
        raise ValueError(f"{path} holds {len(data) - offset} bytes of values, its header says {math.prod(shape)}")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def write_idx(path: Path, values: torch.Tensor) -> None:
    """A uint8 tensor as an IDX file (what :func:`read_idx` reads): zero, the uint8 code, the rank, each dimension."""
    header = struct.pack(">HBB", 0, 0x08, values.dim()) + struct.pack(f">{values.dim()}I", *values.shape)
    path.write_bytes(header + values.to(torch.uint8).contiguous().numpy().tobytes())


def load_mnist(spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 28, 28) float32 normalized, labels (N,) int64)`` from an MNIST folder (the IDX files,
    extracted or ``.gz``)."""
    raw = _mnist_raw(Path(str(spec.mnist)).expanduser())
    prefix = "train" if spec.split == "train" else "t10k"
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte"
        path = next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)
        if path is None:
            raise FederatedConfigError(
                f"dataset {spec.name!r}: no MNIST {spec.split} files in {spec.mnist!r}: expected {raw / name}[.gz] "
                "(the layout torchvision's MNIST download leaves: <folder>/MNIST/raw/)."
            )
        try:
            found.append(read_idx(path))
        except (OSError, ValueError, EOFError) as err:
            raise FederatedConfigError(f"dataset {spec.name!r}: {path} cannot be read: {err}.") from None
    images, labels = found
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise FederatedConfigError(
            f"dataset {spec.name!r}: {len(images)} images of shape {tuple(images.shape[1:])} and {len(labels)} "
            f"labels in {raw}: MNIST has one label per 28 x 28 image."
        )
    images = images.to(torch.float32).div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return images.contiguous(), labels.to(torch.int64)


def _import(path: str, name: str) -> Any:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise FederatedConfigError(
            f"dataset {name!r}: class {path!r} cannot be imported ({err}): install it at the site and give its "
            "full import path, e.g. 'my_site.data.SurveyDataset'."
        ) from None


def load_class(spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Instantiate the spec's Dataset (or LightningDataModule: its ``<split>_dataloader().dataset``) and stack its
    ``(input, target)`` items into two tensors."""
    made = _import(str(spec.target), spec.name)(**spec.kwargs)
    if hasattr(made, "setup") and hasattr(made, f"{spec.split}_dataloader"):  # a LightningDataModule
        made.prepare_data()
        made.setup("fit" if spec.split in ("train", "val") else "test")
        made = getattr(made, f"{spec.split}_dataloader")().dataset
    try:
        count = len(made)
    except TypeError:
        raise FederatedConfigError(
            f"dataset {spec.name!r}: {spec.target} has no len(): use a map-style dataset."
        ) from None
    if count == 0:
        raise FederatedConfigError(f"dataset {spec.name!r}: {spec.target} is empty.")
    inputs, targets = [], []
    for index in range(count):
        item = made[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise FederatedConfigError(
                f"dataset {spec.name!r}: item {index} of {spec.target} is a {type(item).__name__}, not an "
                "(input, target) pair."
            )
        inputs.append(torch.as_tensor(item[0]))
        targets.append(torch.as_tensor(item[1]))
    return torch.stack(inputs), torch.stack(targets)


def tag_dataset(
    name: str,
    data: torch.Tensor,
    targets: torch.Tensor,
    tags: tuple[str, ...] = (),
    description: str | None = None,
    source: str = "the site",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tag ``data`` and ``targets`` for the worker's ``search`` (see the module docstring); returns them.

    Example:
        >>> data, targets = tag_dataset("survey", torch.zeros(3, 2), torch.zeros(3))
        >>> sorted(data.tags), targets.description
        (['#data', '#survey', 'survey'], 'survey: target, 3 samples from the site')
    """
    if len(data) != len(targets):
        raise FederatedConfigError(
            f"dataset {name!r}: {len(data)} inputs but {len(targets)} targets; every input needs its target."
        )
    for tensor, role in ((data, "data"), (targets, "target")):
        tensor.tags = {name, f"#{name}", f"#{role}", *tags}
        tensor.description = description or f"{name}: {role}, {len(data)} samples from {source}"
    return data, targets


def site_tensors(spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's two tensors, loaded and tagged (see :func:`tag_dataset`)."""
    data, targets = load_mnist(spec) if spec.mnist is not None else load_class(spec)
    source = f"the MNIST {spec.split} split" if spec.mnist is not None else f"{spec.target} ({spec.split})"
    return tag_dataset(spec.name, data, targets, spec.tags, spec.description, source)
