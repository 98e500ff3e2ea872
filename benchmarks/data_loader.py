"""Federated data loading throughput: a FederatedDataLoader pass vs a plain DataLoader pass over the same dataset.

Run from the repository root::

    .venv/bin/python benchmarks/data_loader.py                     # synthetic MNIST-shaped data (60000 x 1x28x28)
    .venv/bin/python benchmarks/data_loader.py --root data         # real MNIST from data/MNIST/raw (no download)
    .venv/bin/python benchmarks/data_loader.py --epochs-rss 50     # also 50 federated epochs, RSS after each
    .venv/bin/python benchmarks/data_loader.py --smoke             # tiny sizes, a few seconds

Both contenders iterate one full epoch in batches of ``--batch-size`` (64) with shuffling: the federated loader over
the dataset split IID between ``--workers`` (2) VirtualWorkers (each batch gathered and collated at its worker,
handed out as pointers), and ``torch.utils.data.DataLoader(dataset, batch_size, shuffle=True)`` in this process.
With ``--root`` the dataset is torchvision's MNIST with the seed tutorial's transforms (ToTensor, Normalize), read
through :class:`~lightning_fed.datasets.MNISTDataModule` (which extracts the ``.gz`` files without network access);
without it, a TensorDataset of random images. Every repeat times both, in alternating order, and the reported
ratio is the median of the per-repeat ratios federated/plain (goal: <= 1.2).

The last line printed is one JSON object: ``{"benchmark": "data_loader", ...}``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_fed as sy
from benchmarks.common import format_table, interleaved, machine_info, print_json_line, print_machine, ratios, summary
from lightning_fed.data import FederatedDataLoader, federate

GOAL_RATIO = 1.2


def rss_mib() -> float:
    """Resident set size in MiB, from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_dataset(root: str | None, samples: int) -> tuple[Dataset, str]:
    if root is None:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(samples, 1, 28, 28, generator=g).sub_(0.1307).div_(0.3081)
        return TensorDataset(images, torch.randint(0, 10, (samples,), generator=g)), "synthetic"
    from lightning_fed.datasets import MNISTDataModule

    dm = MNISTDataModule(root, download=False)  # the seed's transforms: ToTensor, Normalize((0.1307,), (0.3081,))
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataset, "mnist"


def one_pass(loader: Any) -> float:
    """Seconds to iterate ``loader`` once (every batch is built, then dropped)."""
    gc.collect()
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def rss_epochs(loader: FederatedDataLoader, epochs: int) -> dict[str, Any]:
    """Iterate ``epochs`` epochs; RSS and the workers' store sizes after each."""
    rss, stores = [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        one_pass(loader)
        gc.collect()
        rss.append(rss_mib())
        stores.append(sum(len(w.objects) for w in loader.workers))
    return {
        "epochs": epochs,
        "rss_mib_first": rss[0],
        "rss_mib_last": rss[-1],
        "rss_mib_max": max(rss),
        "growth_pct": 100 * (max(rss) / rss[0] - 1),
        "store_objects": sorted(set(stores)),  # one Subset per worker when nothing leaks
        "within_5pct": max(rss) <= rss[0] * 1.05,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds, to check the script runs")
    parser.add_argument("--root", default=None, help="data root with MNIST/raw (real MNIST); else synthetic data")
    parser.add_argument("--samples", type=int, default=None, help="synthetic samples (default 60000; smoke 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 7; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="VirtualWorkers the data is split among")
    parser.add_argument("--epochs-rss", type=int, default=None, help="federated epochs for RSS (default 0; smoke 3)")
    args = parser.parse_args(argv)
    defaults = {"samples": 1000, "repeats": 2, "epochs_rss": 3} if args.smoke else {}
    defaults = {"samples": 60000, "repeats": 7, "epochs_rss": 0} | defaults
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.samples, args.repeats, args.batch_size, args.workers) < 1 or args.epochs_rss < 0:
        parser.error("--samples, --repeats, --batch-size and --workers must be >= 1; --epochs-rss >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print_machine(info)
    dataset, kind = make_dataset(args.root, args.samples)
    workers = [sy.VirtualWorker(id=f"worker_{i}") for i in range(args.workers)]
    fed_loader = FederatedDataLoader(federate(dataset, workers), batch_size=args.batch_size, shuffle=True)
    plain_loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    one_pass(fed_loader), one_pass(plain_loader)  # warm up: caches, allocator, lazy imports
    times = interleaved({"federated": lambda: one_pass(fed_loader), "plain": lambda: one_pass(plain_loader)},
                        args.repeats)  # fmt: skip
    ratio = ratios(times["federated"], times["plain"])
    samples = len(dataset)  # type: ignore[arg-type]
    print(
        f"\n## one epoch: {samples} {kind} samples, batch {args.batch_size}, shuffle, {args.workers} workers "
        f"(seconds per epoch, {args.repeats} interleaved repeats)"
    )
    rows = []
    for name, loader in (("FederatedDataLoader", fed_loader), ("torch DataLoader", plain_loader)):
        s = summary(times["federated" if loader is fed_loader else "plain"])
        rows.append(
            [name, len(loader), f"{s['median']:.4f}", f"{s['min']:.4f} / {s['max']:.4f}", samples / s["median"]]
        )
    print(format_table(["loader", "batches", "s/epoch (median)", "min / max", "samples/s"], rows))
    verdict = "meets" if ratio["median"] <= GOAL_RATIO else "MISSES"
    print(
        f"\nfederated/plain = {ratio['median']:.3f} (min {ratio['min']:.3f}, max {ratio['max']:.3f}): {verdict} "
        f"the {GOAL_RATIO}x goal. load avg at the end: {os.getloadavg()}"
    )
    rss = None
    if args.epochs_rss:
        rss = rss_epochs(fed_loader, args.epochs_rss)
        print(
            f"\n## RSS over {rss['epochs']} federated epochs: first {rss['rss_mib_first']:.1f} MiB, last "
            f"{rss['rss_mib_last']:.1f} MiB, max {rss['rss_mib_max']:.1f} MiB ({rss['growth_pct']:+.2f}%); "
            f"objects in the workers' stores after each epoch: {rss['store_objects']}"
        )
    print_json_line(
        {
            "benchmark": "data_loader",
            "machine": info,
            "config": {
                "data": kind,
                "samples": samples,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "repeats": args.repeats,
                "smoke": args.smoke,
            },
            "seconds": {name: summary(values) for name, values in times.items()},
            "ratio": ratio,
            "goal_ratio": GOAL_RATIO,
            "meets_goal": ratio["median"] <= GOAL_RATIO,
            "load_avg_end": list(os.getloadavg()),
            "rss": rss,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
