"""Several epochs over a federated loader leave the workers' stores and the process's memory where they were.

MNIST-sized synthetic data (6000 images of 1x28x28, about 19 MB) on two workers; the benchmark
(``benchmarks/data_loader.py --epochs-rss 50``) does 50 epochs on 60000.
"""

from __future__ import annotations

import gc
import os

import torch
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed.data import FederatedDataLoader, federate

EPOCHS = 5


def rss_bytes() -> int:
    """Resident set size, from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_epoch(loader: FederatedDataLoader) -> int:
    batches = 0
    for data, target in loader:
        assert data.shape[1:] == (1, 28, 28) and target.shape == data.shape[:1]
        batches += 1
    return batches  # `data` and `target` die with this frame: no batch pointer outlives the epoch


def test_epochs_keep_worker_stores_and_rss_constant():
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.rand(6000, 1, 28, 28, generator=generator), torch.arange(6000) % 10)
    workers = [sy.VirtualWorker(id="north"), sy.VirtualWorker(id="south")]
    loader = FederatedDataLoader(federate(dataset, workers), batch_size=64, shuffle=True)
    stores, rss = [], []
    for _ in range(EPOCHS):
        assert run_epoch(loader) == len(loader) == 94
        gc.collect()
        stores.append([sorted(type(obj).__name__ for obj in w.objects.values()) for w in workers])
        rss.append(rss_bytes())
    assert stores == [[["Subset"], ["Subset"]]] * EPOCHS  # only the shard is left at each worker
    assert sy.me.objects == {}
    assert max(rss) <= rss[0] * 1.05, f"RSS grew over {EPOCHS} epochs: {[r >> 20 for r in rss]} MiB"
