"""The seed tutorial's two schools, as a Lightning app: Westside School and Grapevine High train one MNIST classifier
without pooling their handwriting.

The model is the seed's CNN (``lightning_fed.models.SeedCNN``) in an ordinary LightningModule; the only federated
lines are the datamodule (MNIST split between the schools) and ``Trainer(strategy=FederatedStrategy(...))``.

Run (offline, with the four MNIST files in ``data/MNIST/raw``):
    python examples/mnist_two_schools.py --data-root data
    python examples/mnist_two_schools.py --data-root data --partition dirichlet --alpha 0.3 --mode follow
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl

from lightning_fed import FederatedStrategy
from lightning_fed.datasets import FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--mnist-from", default=None,
                        help="a folder whose MNIST/raw holds the four .gz files: copied into the data root when "
                             "missing there (for machines without internet); ignored if it does not exist")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=10, help="rounds (FedAvg) or epochs (follow); the seed uses 10")
    parser.add_argument("--mode", choices=["fedavg", "follow"], default="fedavg",
                        help="fedavg: rounds of local training + averaging; follow: the seed's way, the model "
                             "follows each batch to its school")  # fmt: skip
    parser.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration (with --partition dirichlet)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train-batches", type=float, default=1.0, help="fraction of each round (smoke runs)")
    parser.add_argument("--limit-test-batches", type=float, default=1.0)
    parser.add_argument("--log-dir", default="lightning_logs")
    return parser.parse_args(argv)


def copy_mnist_files(source: str | None, root: str) -> None:
    """Copy the MNIST .gz files from ``source/MNIST/raw`` into ``root/MNIST/raw`` where they are missing."""
    if source is None or not (Path(source) / "MNIST" / "raw").is_dir():
        return
    target = Path(root) / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for file in (Path(source) / "MNIST" / "raw").glob("*.gz"):
        if not (target / file.name).exists():
            shutil.copyfile(file, target / file.name)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    copy_mnist_files(args.mnist_from, args.data_root)
    pl.seed_everything(args.seed, workers=True)
    data = FederatedMNISTDataModule(
        root=args.data_root,
        workers=("westside", "grapevine"),
        partition=args.partition,
        alpha=args.alpha if args.partition == "dirichlet" else None,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model = MNISTClassifier(lr=args.lr, momentum=args.momentum)
    trainer = pl.Trainer(
        strategy=FederatedStrategy(mode=args.mode, seed=args.seed),
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        limit_train_batches=args.limit_train_batches,
        limit_test_batches=args.limit_test_batches,
        default_root_dir=args.log_dir,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    print(f"\nTest accuracy after {args.epochs} {'rounds' if args.mode == 'fedavg' else 'epochs'} "
          f"({args.mode}, {args.partition}): {100 * result['test_acc']:.2f}%  (fit: {fit_seconds:.0f} s)")  # fmt: skip
    print("\nPer school:\n" + trainer.strategy.worker_table())
    return {"test_acc": float(result["test_acc"]), "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main()
