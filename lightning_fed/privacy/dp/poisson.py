"""Poisson sampling of each worker's batches, for sample-level DP-SGD (what the accountants assume).

Each batch takes every sample of the worker's shard independently with probability ``q = batch_size / shard size``,
as Opacus' ``UniformWithReplacementSampler`` (the same ``torch.rand(n) < q`` draw, so with the same generator the same
batches). Batch sizes vary around ``batch_size``; an empty draw still gives a batch (with zero rows), so the step
happens and adds its noise, as Opacus' ``DPDataLoader`` does.

:class:`PoissonBatches` builds the batches at the workers, as pointers, like
:class:`~lightning_fed.data.FederatedDataLoader`: the seed comes from the loader's seed, the epoch and the worker's
position, so a run is reproducible and a resumed run draws the same batches.

Example:
    >>> import torch
    >>> generator = torch.Generator().manual_seed(0)
    >>> batches = poisson_batch_positions(10, sample_rate=0.3, num_batches=3, generator=generator)
    >>> len(batches), all(0 <= i < 10 for b in batches for i in b)
    (3, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import torch

from lightning_fed.data.loader import FederatedDataLoader, mix_seed
from lightning_fed.workers.base import BaseWorker

_POISSON_STREAM = 0x9015  # keeps Poisson draws independent of the loader's shuffling and client sampling


def poisson_batch_positions(
    num_samples: int, sample_rate: float, num_batches: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """``num_batches`` Poisson draws of positions in ``range(num_samples)``, each kept with ``sample_rate``."""
    return [p.tolist() for p in iter_poisson_positions(num_samples, sample_rate, num_batches, generator)]


def iter_poisson_positions(
    num_samples: int, sample_rate: float, num_batches: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """:func:`poisson_batch_positions` one draw at a time, as tensors: a draw is made when it is asked for, so a
    round that trains fewer batches than an epoch holds draws no more (the same draws, in the same order)."""
    if num_samples <= 0:  # checked at the call, not at the first draw
        raise ValueError(f"Poisson batches need num_samples > 0 (the shard's size), got num_samples={num_samples!r}")
    return (
        (torch.rand(num_samples, generator=generator) < sample_rate).nonzero(as_tuple=False).reshape(-1)
        for _ in range(num_batches)
    )


class PoissonBatches:
    """Poisson-sampled pointer batches over a :class:`~lightning_fed.data.FederatedDataLoader`'s shards.

    Args:
        loader: the federated loader (its shards, ``batch_size``, ``collate_fn`` and ``seed`` are used).
        seed: overrides the loader's seed.

    Example:
        >>> import torch, lightning_fed as sy
        >>> from torch.utils.data import TensorDataset
        >>> from lightning_fed.data import FederatedDataLoader, federate
        >>> a, b = sy.VirtualWorker(id="pa"), sy.VirtualWorker(id="pb")
        >>> loader = FederatedDataLoader(federate(TensorDataset(torch.randn(40, 3)), (a, b)), batch_size=5)
        >>> poisson = PoissonBatches(loader)
        >>> poisson.sample_rate("pa")
        0.25
        >>> [x.location.id for (x,) in poisson.worker_batches(a, epoch=0)]
        ['pa', 'pa', 'pa', 'pa']
    """

    def __init__(self, loader: FederatedDataLoader, seed: int | None = None) -> None:
        self.loader = loader
        self.seed = loader.seed if seed is None else int(seed)

    def num_samples(self, worker: BaseWorker | Hashable) -> int:
        return len(self.loader.federated_dataset[_worker_id(worker)])

    def sample_rate(self, worker: BaseWorker | Hashable) -> float:
        """``q = batch_size / shard size`` (at most 1)."""
        return min(1.0, self.loader.batch_size / self.num_samples(worker))

    def batch_positions(
        self, worker: BaseWorker | Hashable, epoch: int, num_batches: int | None = None
    ) -> list[list[int]]:
        """The positions (in the worker's shard) of each batch of ``epoch``; by default as many batches as the
        loader gives the worker per epoch."""
        return [p.tolist() for p in self.positions(worker, epoch, num_batches)]

    def positions(
        self, worker: BaseWorker | Hashable, epoch: int, num_batches: int | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`batch_positions` as tensors, each drawn when it is asked for."""
        worker_id = _worker_id(worker)
        position = self.loader.federated_dataset.worker_ids.index(worker_id)
        count = self.loader.num_batches(worker_id) if num_batches is None else num_batches
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, position, _POISSON_STREAM))
        return iter_poisson_positions(self.num_samples(worker_id), self.sample_rate(worker_id), count, generator)

    def worker_batches(
        self, worker: BaseWorker | Hashable, epoch: int, num_batches: int | None = None
    ) -> Iterator[Any]:
        """The worker's Poisson batches of ``epoch``, as pointer batches built at the worker by the loader's own
        batch plan (which gives an empty draw a batch of zero rows)."""
        return self.loader.batches_at(worker, self.positions(worker, epoch, num_batches))

    def close(self) -> None:
        """Nothing to release: the batches are built by the loader's plan, which the loader owns."""

    def __repr__(self) -> str:
        return (
            f"PoissonBatches({len(self.loader.workers)} workers, batch_size={self.loader.batch_size}, seed={self.seed})"
        )


def _worker_id(worker: BaseWorker | Hashable) -> Hashable:
    return worker.id if isinstance(worker, BaseWorker) else worker
