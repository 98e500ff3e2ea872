"""Shared pieces for the strategy tests: tiny data, a datamodule over a FederatedDataLoader, a centralized twin."""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_fed as sy
from lightning_fed.data import FederatedDataLoader, federate


def tiny_dataset(n: int = 48, features: int = 4, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y.clamp(max=classes - 1))


class FedDM(pl.LightningDataModule):
    """The train data federated over ``num_workers`` fresh VirtualWorkers; validation on the whole dataset."""

    def __init__(
        self,
        dataset: Dataset,
        num_workers: int = 2,
        batch_size: int = 8,
        seed: int = 0,
        partition: str = "iid",
        prefix: str = "w",
        drop_last: bool = False,
        **partition_args,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.workers = [sy.VirtualWorker(id=f"{prefix}{i}") for i in range(num_workers)]
        self.fed = federate(dataset, self.workers, partition, seed=seed, **partition_args)
        self.loader = FederatedDataLoader(self.fed, batch_size=batch_size, shuffle=True, seed=seed, drop_last=drop_last)

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=16)


class _FixedBatches:
    """A batch sampler replaying a precomputed list of index batches per epoch."""

    def __init__(self, epochs: list[list[list[int]]]) -> None:
        self.epochs = epochs
        self.calls = 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epochs[min(self.calls, len(self.epochs) - 1)]
        self.calls += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self.epochs[0])


class CentralDM(pl.LightningDataModule):
    """Centralized training on exactly the given batches (dataset indices), epoch by epoch."""

    def __init__(self, dataset: Dataset, epochs: list[list[list[int]]]) -> None:
        super().__init__()
        self.dataset = dataset
        self.sampler = _FixedBatches(epochs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=self.sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=16)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
