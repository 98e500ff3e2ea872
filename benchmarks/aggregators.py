"""FedAvg, FedProx, SCAFFOLD and FedAdam on non-IID MNIST: test accuracy after every round.

100 workers, 10 sampled a round, McMahan et al. 2017's 2NN (784-200-200-10), batch 10, one local epoch, SGD; the
data split with McMahan's pathological shards (2 label-sorted shards of 300 per worker) and with Dirichlet(0.1)
label skew. Every run uses the same seed, so the partitions and client samples are the same across algorithms.

    python benchmarks/aggregators.py --root data --rounds 20 --out docs/img/aggregators_mnist.png
    python benchmarks/aggregators.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_json_line, print_machine
from benchmarks.plot_curves import read_curve
from lightning_fed import FederatedStrategy
from lightning_fed.aggregation import SCAFFOLD, FedAdam, FedAvg, FedProx
from lightning_fed.datasets import FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier

ALGORITHMS = {
    "FedAvg": lambda: FedAvg(),
    "FedProx (mu=0.01)": lambda: FedProx(mu=0.01),
    "SCAFFOLD": lambda: SCAFFOLD(),
    "FedAdam (server lr 0.01)": lambda: FedAdam(server_lr=0.01, tau=1e-3),
}
PARTITIONS = {
    "shards (2 per worker)": {"partition": "shards", "shards_per_worker": 2},
    "dirichlet (alpha 0.1)": {"partition": "dirichlet", "alpha": 0.1},
}


def run(args: argparse.Namespace, algorithm: str, partition: str, log_dir: Path) -> dict[str, Any]:
    pl.seed_everything(args.seed, workers=True)
    data = FederatedMNISTDataModule(root=args.root, workers=args.workers, batch_size=args.batch_size,
                                    test_batch_size=1000, seed=args.seed, **PARTITIONS[partition])  # fmt: skip
    model = MNISTClassifier(architecture="mcmahan_2nn", lr=args.lr)
    logger = CSVLogger(log_dir, name=f"{algorithm}-{partition}".replace(" ", "_").replace("(", "").replace(")", ""))
    trainer = pl.Trainer(
        strategy=FederatedStrategy(
            aggregation=ALGORITHMS[algorithm](), clients_per_round=args.clients_per_round, seed=args.seed
        ),
        accelerator="cpu",
        devices=1,
        max_epochs=args.rounds,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=args.limit_val_batches,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    _, acc = read_curve(Path(logger.log_dir) / "metrics.csv", "val_acc")
    curve = " ".join(f"{100 * a:.1f}" for a in acc)
    print(f"{partition:>24} {algorithm:>26}: {curve}  ({seconds:.0f} s)", flush=True)
    return {"algorithm": algorithm, "partition": partition, "val_acc": acc, "seconds": seconds}


def plot(results: list[dict[str, Any]], out: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, len(PARTITIONS), sharey=True)
    for ax, partition in zip(axes, PARTITIONS):
        for r in (r for r in results if r["partition"] == partition):
            ax.plot(range(1, len(r["val_acc"]) + 1), [100 * a for a in r["val_acc"]], marker=".", label=r["algorithm"])
        ax.set_title(f"MNIST, 100 workers, {partition}")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend()
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print("saved", out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-val-batches", type=float, default=1.0)
    parser.add_argument("--out", default=None, help="PNG of the accuracy curves")
    parser.add_argument("--log-dir", default="outputs/aggregators")
    parser.add_argument("--smoke", action="store_true", help="tiny generated MNIST files, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers.mnist_files import write_mnist_raw

        args.root = tempfile.mkdtemp()
        write_mnist_raw(args.root, num_train=400, num_test=40)
        args.rounds, args.workers, args.clients_per_round, args.log_dir = 1, 4, 2, str(Path(args.root) / "logs")
    info = machine_info()
    print_machine(info)
    torch.set_float32_matmul_precision("high")
    results = [run(args, a, p, Path(args.log_dir)) for p in PARTITIONS for a in ALGORITHMS]
    if args.out:
        plot(results, args.out)
    print_json_line({"benchmark": "aggregators", "machine": info, "config": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
