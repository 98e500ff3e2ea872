"""Poisson-sampled pointer batches: built at the worker from the drawn positions, reproducible per (seed, epoch,
worker), and an empty draw still yields a (zero-row) batch."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed.data import FederatedDataLoader, federate
from lightning_fed.pointers import PointerTensor
from lightning_fed.privacy.dp import PoissonBatches


def at_worker(x: PointerTensor, y: PointerTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch read at its worker (the test owns the simulation): ``.get()`` of a worker's data is refused by the
    default strict policy."""
    with x.location.session((x, y)) as (data, target):
        return data.clone(), target.clone()


def make_loader(batch_size: int = 4, n: int = 60, prefix: str = "pb"):
    workers = [sy.VirtualWorker(id=f"{prefix}{i}") for i in range(3)]
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    dataset = TensorDataset(x, torch.arange(n))
    loader = FederatedDataLoader(federate(dataset, workers, seed=0), batch_size=batch_size, seed=11)
    return dataset, workers, loader


def test_batches_are_the_drawn_samples_at_the_worker():
    dataset, workers, loader = make_loader()
    poisson = PoissonBatches(loader)
    for position, worker in enumerate(workers):
        shard_indices = loader.federated_dataset.partition[position]
        assert poisson.sample_rate(worker) == 4 / len(shard_indices)
        drawn = poisson.batch_positions(worker, epoch=2)
        assert len(drawn) == loader.num_batches(worker)
        for (x, y), positions in zip(poisson.worker_batches(worker, epoch=2), drawn):
            assert x.location is worker and y.location is worker
            expected = [shard_indices[j] for j in positions]
            data, target = at_worker(x, y)
            assert target.tolist() == expected and torch.equal(data, dataset.tensors[0][expected])
    assert poisson.batch_positions(workers[0], 2) == poisson.batch_positions(workers[0], 2)
    assert poisson.batch_positions(workers[0], 2) != poisson.batch_positions(workers[0], 3)
    assert PoissonBatches(loader, seed=12).batch_positions(workers[0], 2) != poisson.batch_positions(workers[0], 2)
    assert repr(poisson) == "PoissonBatches(3 workers, batch_size=4, seed=11)"


def test_an_empty_draw_gives_a_zero_row_batch():
    _, workers, loader = make_loader(batch_size=1, prefix="pe")
    poisson = PoissonBatches(loader)
    epoch = next(
        e for e in range(50) if any(len(b) == 0 for b in poisson.batch_positions(workers[0], e, num_batches=3))
    )
    drawn = poisson.batch_positions(workers[0], epoch, num_batches=3)
    for (x, y), positions in zip(poisson.worker_batches(workers[0], epoch, num_batches=3), drawn):
        x, y = at_worker(x, y)
        assert x.shape == (len(positions), 2) and y.shape == (len(positions),)
    poisson.close()
