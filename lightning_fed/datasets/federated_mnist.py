"""MNIST split among workers, as one LightningDataModule with flat arguments (handy for LightningCLI).

Private by default: the two schools hold their images under the strict data-access policy (no ``.get()`` of their
data or batches; model updates and scalar metrics leave, audited); ``policy="open"`` opts out, with a warning.

Example:
    >>> dm = FederatedMNISTDataModule(root="data", partition="dirichlet", alpha=0.3)
    >>> [w.id for w in dm.workers], dm.partition_args, dm.policy, dm.workers[0].policy.release_data
    (['westside', 'grapevine'], {'alpha': 0.3}, None, False)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_fed.data.datamodule import FederatedDataModule
from lightning_fed.datasets.mnist import MNISTDataModule

if TYPE_CHECKING:
    from lightning_fed.privacy.policy import DataAccessPolicy


class FederatedMNISTDataModule(FederatedDataModule):
    """MNIST (torchvision's loader, offline once the files are in ``root/MNIST/raw``) federated over ``workers``.

    Args:
        root: the data folder holding ``MNIST/raw``.
        workers: worker ids (default: the seed tutorial's two schools) or a count.
        partition: ``"iid"``, ``"dirichlet"`` (needs ``alpha``), ``"shards"`` or ``"quantity_skew"``.
        alpha: Dirichlet concentration (lower is more skewed).
        shards_per_worker: shards per worker for ``partition="shards"`` (McMahan 2017 uses 2).
        min_size, distribution, sigma, power: the other partitioners' arguments, as in
            :class:`~lightning_fed.data.FederatedDataModule`; a partitioner refuses those it does not take.
        batch_size: each worker's batch size (the seed uses 64).
        test_batch_size: validation and test batch size.
        val_size: training images held out for validation; 0 validates on the test set, as the seed does.
        seed: drives the partition, shuffling and client sampling.
        download: try torchvision's download when files are missing.
        order: ``"sequential"`` or ``"round_robin"`` batches (for the strategy's ``mode="follow"``).
        drop_last: drop each worker's last short batch.
        policy: the workers' data-access policy: ``None`` (the default) keeps theirs, the strict one (their images
            never leave them); ``"open"`` lets them leave (audited; warns once per process); or a
            :class:`~lightning_fed.privacy.DataAccessPolicy`. On the command line: ``--data.policy open``.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data",
        workers: Sequence[str] | int = ("westside", "grapevine"),
        partition: str = "iid",
        alpha: float | None = None,
        shards_per_worker: int | None = None,
        min_size: int | None = None,
        distribution: str | None = None,
        sigma: float | None = None,
        power: float | None = None,
        batch_size: int = 64,
        test_batch_size: int = 1000,
        val_size: int = 0,
        seed: int = 0,
        download: bool = True,
        order: str = "sequential",
        drop_last: bool = False,
        policy: DataAccessPolicy | str | None = None,
    ) -> None:
        mnist = MNISTDataModule(root, batch_size=batch_size, test_batch_size=test_batch_size, val_size=val_size,
                                download=download, seed=seed)  # fmt: skip
        super().__init__(
            mnist,
            workers=workers if isinstance(workers, int) else list(workers),
            partition=partition,
            alpha=alpha,
            shards_per_worker=shards_per_worker,
            min_size=min_size,
            distribution=distribution,
            sigma=sigma,
            power=power,
            seed=seed,
            batch_size=batch_size,
            order=order,
            drop_last=drop_last,
            policy=policy,
        )
