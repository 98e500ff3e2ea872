"""Federated data that already lives at the sites: each school's dataset stays on its own machine.

In a deployment the server does not split a dataset: each site serves its own (``lightning-fed worker --data
mnist-train=/data/school``), and the server only learns its name and length. :class:`SiteLoader` plans batches over
those datasets exactly as :class:`~lightning_fed.data.FederatedDataLoader` does over shards (the same seeded order
per seed, epoch and worker position), but hands out *positions*, not pointers: ``FederatedStrategy`` sends each
sampled site its whole round of positions at once (one request a round, :mod:`lightning_fed.backends.remote`).
:class:`SiteDataModule` wraps it for Lightning, with the server's own (public) validation and test data, if any.

Example (sites started with ``lightning-fed worker``; see docs/deployment.md)::

    sites = [RemoteWorker("alice", "10.0.0.2:50051", certs="certs"), RemoteWorker("bob", "10.0.0.3:50051", ...)]
    data = SiteDataModule(sites, "mnist-train", batch_size=64, shuffle=True, seed=0, test_dataset=mnist_test)
    pl.Trainer(strategy=FederatedStrategy(), max_epochs=2).fit(MNISTClassifier(), datamodule=data)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_fed.data.loader import EpochClock, FederatedDataLoader, check_batching
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker


def _site(site: BaseWorker | str, certs: str | None, insecure: bool, timeout: float) -> BaseWorker:
    """A site given as a worker, or as ``"ID=HOST:PORT"`` (a :class:`~lightning_fed.transport.RemoteWorker`)."""
    if not isinstance(site, str):
        return site
    site_id, sep, address = site.partition("=")
    if not sep or not site_id or not address:
        raise FederatedConfigError(
            f"`sites` item {site!r} is not valid: write a site as 'ID=HOST:PORT', e.g. 'alice=10.0.0.2:50051'."
        )
    from lightning_fed.transport import RemoteWorker  # gRPC is imported only for a deployment

    return RemoteWorker(site_id, address, certs=certs, insecure=insecure, timeout=timeout)


class SiteShards:
    """The sites and the length of each one's dataset: what the planner needs of a federated dataset."""

    def __init__(self, sites: Sequence[BaseWorker], lengths: Sequence[int]) -> None:
        self.workers = list(sites)
        self.worker_ids = [site.id for site in self.workers]
        self._lengths = dict(zip(self.worker_ids, lengths))

    def __getitem__(self, worker_id: Hashable) -> range:
        if worker_id not in self._lengths:
            raise KeyError(f"no site {worker_id!r} in this federation: it has {self.worker_ids}")
        return range(self._lengths[worker_id])


class SiteLoader(FederatedDataLoader):
    """Batches over the sites' own datasets, as positions (see the module docstring).

    Args:
        sites: the sites (:class:`~lightning_fed.transport.RemoteWorker`), in a fixed order (it seeds the shuffle).
        dataset: the name each site serves its training data under.
        batch_size, shuffle, drop_last, seed: as in :class:`~lightning_fed.data.FederatedDataLoader`.
    """

    remote = True  # the strategy runs each site's round at the site

    def __init__(self, sites: Sequence[BaseWorker], dataset: str, batch_size: int = 8, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0) -> None:  # fmt: skip
        sites = list(sites)
        if not sites or not all(getattr(site, "remote", False) for site in sites):
            raise FederatedConfigError(
                f"`sites={sites!r}` is not valid: pass the remote workers of the federation (RemoteWorker(...)); "
                "for simulated workers use FederatedDataModule."
            )
        check_batching(batch_size, seed)
        lengths = []
        for site in sites:
            found = site.hello().get("lengths", {})
            if dataset not in found:
                raise FederatedConfigError(
                    f"site {site.id!r} serves no dataset {dataset!r} (it serves {sorted(found)}): start its worker "
                    f"with --data {dataset}=PATH, or pass the name it serves."
                )
            lengths.append(_site_length(site.id, dataset, found[dataset]))
        self.dataset_name = dataset
        self.federated_dataset = SiteShards(sites, lengths)  # type: ignore[assignment]
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, bool(shuffle), bool(drop_last), seed
        self.sampler = EpochClock()

    def worker_batches(self, worker: BaseWorker | Hashable, epoch: int | None = None) -> Iterator[list[int]]:
        """The positions of each batch ``worker`` trains on in ``epoch``, in the order a simulation would use."""
        worker_id = getattr(worker, "id", worker)
        position = self._position(worker_id)
        order = self._shard_order(position, len(self.federated_dataset[worker_id]), self._epoch(epoch)).tolist()
        for start in self._batch_starts(len(order)):
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[Any]:  # a generator: Lightning checks iter(loader) before the strategy takes it
        raise FederatedConfigError(
            "a SiteLoader is not iterated batch by batch: the sites' data never comes to the server. Train with "
            "FederatedStrategy (mode='fedavg'), which sends each site its whole round."
        )
        yield  # unreachable

    def __repr__(self) -> str:
        sites = self.federated_dataset.worker_ids
        return f"SiteLoader({self.dataset_name!r}, sites={sites}, batch_size={self.batch_size})"


MAX_SITE_SAMPLES = 10**9  # the server shuffles each site's positions in memory: 8 bytes a sample


def _site_length(site_id: Hashable, dataset: str, value: Any) -> int:
    """The sample count a site reported in its hello, checked: the server plans (and allocates) from it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SITE_SAMPLES:
        raise FederatedConfigError(
            f"site {site_id!r} reports {value!r} samples in dataset {dataset!r}: a site must report a whole number "
            f"from 1 to {MAX_SITE_SAMPLES:,}. Check that site's worker (its --data folder), or leave it out of "
            "`sites`."
        )
    return value


class SiteDataModule(pl.LightningDataModule):
    """A LightningDataModule over the sites' own datasets (training), and the server's own validation and test data.

    Deployed or simulated is configuration: in LightningCLI YAML, a list of site addresses takes the place of worker
    names (``data: {class_path: lightning_fed.data.sites.SiteDataModule, init_args: {sites: ["alice=10.0.0.2:50051",
    ...], certs: certs, dataset: mnist-train}}``).

    Args:
        sites: the sites: :class:`~lightning_fed.transport.RemoteWorker` objects, or ``"ID=HOST:PORT"`` strings
            (reached with ``certs``, or ``insecure`` on loopback).
        dataset, batch_size, shuffle, drop_last, seed: see :class:`SiteLoader`.
        certs: the server's certificate folder (``ca.pem``, ``server.pem``, ``server.key``), for string sites.
        insecure: plaintext to string sites on loopback (tests).
        timeout: seconds a site may take to answer one request (a whole round's training), for string sites.
        val_dataset, test_dataset: data the server holds itself (public data), evaluated on the global model.
        test_mnist: an MNIST folder whose test split is the server's test data (instead of ``test_dataset``).
    """

    def __init__(self, sites: Sequence[BaseWorker | str], dataset: str = "mnist-train", batch_size: int = 8,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, certs: str | None = None,
                 insecure: bool = False, timeout: float = 3600.0, val_dataset: Dataset | None = None,
                 test_dataset: Dataset | None = None, test_mnist: str | None = None,
                 eval_batch_size: int = 256) -> None:  # fmt: skip
        super().__init__()
        self.sites = [_site(site, certs, insecure, timeout) for site in sites]
        self.loader = SiteLoader(self.sites, dataset, batch_size, shuffle, drop_last, seed)
        if test_mnist is not None and test_dataset is None:
            from lightning_fed.transport.site_data import DatasetSpec, load_mnist

            test_dataset = TensorDataset(*load_mnist(DatasetSpec("server-test", mnist=test_mnist, split="test")))
        self.val_dataset, self.test_dataset, self.eval_batch_size = val_dataset, test_dataset, eval_batch_size

    def train_dataloader(self) -> SiteLoader:
        return self.loader

    def val_dataloader(self) -> Any:
        return [] if self.val_dataset is None else DataLoader(self.val_dataset, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> Any:
        if self.test_dataset is None:
            raise FederatedConfigError("SiteDataModule has no test_dataset: pass the server's own test data.")
        return DataLoader(self.test_dataset, batch_size=self.eval_batch_size)
