"""A deployed FedAvg round against the same round in process (issue 17): sites as separate processes on loopback,
over mutual TLS, against VirtualWorkers holding the same data.

Each site is ``lightning-fed worker`` (one torch thread) serving a synthetic MNIST-shaped folder written here (or a
share of real MNIST with ``--mnist``); the deployed Trainer sends each sampled site one request a round, and the
sites of a round train at the same time. The in-process run is the same LightningModule, seed, batches and rounds
with ``FederatedDataLoader`` over VirtualWorkers (sequential, the default backend). Contenders are interleaved; the
time of a round is measured from its first step's start to its last step's end (start-up excluded), and the ratio is
the median of per-repeat ratios. Bytes per round per site are what the server sent to and received from each site.

    python benchmarks/deployment.py --model seed_cnn --sites 2 --per-site 3000
    python benchmarks/deployment.py --model mcmahan_2nn --sites 10 --per-site 600
    python benchmarks/deployment.py --smoke
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, machine_info, print_json_line, print_machine, ratios, summary
from lightning_fed import FederatedStrategy, VirtualWorker
from lightning_fed.data import FederatedDataLoader
from lightning_fed.data.federated import FederatedDataset
from lightning_fed.data.sites import SiteDataModule
from lightning_fed.models import MNISTClassifier
from lightning_fed.transport import RemoteWorker
from lightning_fed.transport.certificates import make_federation
from lightning_fed.transport.site_data import MNIST_MEAN, MNIST_STD, write_idx

ACCEPTED = "lightning_fed.models.MNISTClassifier"


def site_arrays(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Site ``k``'s ``n`` MNIST-shaped images (uint8) and labels, seeded by ``k``."""
    rng = np.random.default_rng(100 + k)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def as_tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images).to(torch.float32).div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels.astype(np.int64)))


def start_sites(root: Path, ids: list[str], certs: Path) -> dict[str, tuple[subprocess.Popen, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for site in ids:
        command = [sys.executable, "-m", "lightning_fed.transport.worker_main", "--id", site, "--listen",
                   "127.0.0.1:0", "--certs", str(certs), "--data", f"mnist-train={root / site}",
                   "--accept-model", ACCEPTED]  # fmt: skip
        procs[site] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = {}
    for site, proc in procs.items():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            found = re.search(r"listening on (\S+):(\d+) ", line)
            if found:
                out[site] = (proc, f"{found.group(1)}:{found.group(2)}")
                break
            if not line and proc.poll() is not None:
                raise RuntimeError(f"site {site} exited with status {proc.returncode}")
        else:
            raise RuntimeError(f"site {site} did not start within 300 s")
    return out


class RoundClock(pl.Callback):
    """Seconds per round: first step's start to last step's end, per epoch."""

    def __init__(self) -> None:
        self.rounds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._start is not None:
            self.rounds.append(time.perf_counter() - self._start)


def fit(datamodule: Any, args: argparse.Namespace) -> float:
    clock = RoundClock()
    torch.manual_seed(0)
    model = MNISTClassifier(architecture=args.model, lr=0.01)
    trainer = pl.Trainer(strategy=FederatedStrategy(clients_per_round=args.per_round), max_epochs=args.rounds,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock])  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return float(np.median(clock.rounds))


class InProcess(pl.LightningDataModule):
    def __init__(self, parts: list[TensorDataset], batch_size: int) -> None:
        super().__init__()
        workers = [VirtualWorker(id=f"site{k}") for k in range(len(parts))]
        bounds = np.cumsum([0] + [len(p) for p in parts])
        partition = [list(range(bounds[k], bounds[k + 1])) for k in range(len(parts))]
        fed = FederatedDataset(ConcatDataset(parts), workers, partition)
        self.loader = FederatedDataLoader(fed, batch_size=batch_size, shuffle=True, seed=0)

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seed_cnn", choices=("seed_cnn", "mcmahan_2nn", "mcmahan_cnn"))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--per-site", type=int, default=3000, help="images per site")
    parser.add_argument("--per-round", type=int, default=None, help="sites sampled per round (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 sites of 64 images, 1 round, 1 repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sites, args.per_site, args.rounds, args.repeats, args.batch_size = 2, 64, 1, 1, 32
    info = machine_info()
    print_machine(info)
    ids = [f"site{k}" for k in range(args.sites)]
    with tempfile.TemporaryDirectory(prefix="lightning-fed-deploy-bench-") as tmp:
        root = Path(tmp)
        make_federation(root / "certs", ids)
        parts = []
        for k, site in enumerate(ids):
            images, labels = site_arrays(k, args.per_site)
            (root / site).mkdir()
            write_idx(root / site / "train-images-idx3-ubyte", torch.from_numpy(images))
            write_idx(root / site / "train-labels-idx1-ubyte", torch.from_numpy(labels))
            parts.append(as_tensors(images, labels))
        sites = start_sites(root, ids, root / "certs")
        try:
            remotes = [RemoteWorker(s, sites[s][1], certs=root / "certs", timeout=3600) for s in ids]
            times: dict[str, list[float]] = {"deployed": [], "in_process": []}
            traffic: dict[str, list[int]] = {}
            for _ in range(args.repeats):
                for remote in remotes:
                    remote.traffic.clear()
                times["deployed"].append(fit(SiteDataModule(remotes, "mnist-train", args.batch_size, seed=0), args))
                traffic = {r.id: r.traffic.get("TrainRequest", [0, 0, 0]) for r in remotes}
                times["in_process"].append(fit(InProcess(parts, args.batch_size), args))
        finally:
            for proc, _ in sites.values():
                proc.terminate()
            for proc, _ in sites.values():
                proc.wait(timeout=30)
    r = ratios(times["deployed"], times["in_process"])
    per_site = [(sent / max(n, 1), received / max(n, 1)) for n, sent, received in traffic.values()]
    mib = 2**20
    rows = [[args.model, args.sites, args.per_site, summary(times["deployed"])["median"],
             summary(times["in_process"])["median"], r["median"], r["min"], r["max"],
             max(s for s, _ in per_site) / mib, max(b for _, b in per_site) / mib]]  # fmt: skip
    print(format_table(["model", "sites", "images/site", "deployed s/round", "in-process s/round", "ratio (median)",
                        "min", "max", "MiB to a site/round", "MiB back/round"], rows))  # fmt: skip
    print_json_line({"benchmark": "deployment", "machine": info, "model": args.model, "sites": args.sites,
                     "per_site": args.per_site, "rounds": args.rounds, "repeats": args.repeats,
                     "deployed_s_per_round": summary(times["deployed"])["median"],
                     "in_process_s_per_round": summary(times["in_process"])["median"], "ratio": r["median"],
                     "bytes_to_site_per_round": max(s for s, _ in per_site),
                     "bytes_from_site_per_round": max(b for _, b in per_site)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
