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
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_fed import FederatedStrategy
from lightning_fed.datasets import MNIST_FILES, FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--mnist-from", default=None,
                        help="a folder holding the four MNIST .gz files (itself, or in its MNIST/raw or raw "
                             "subfolder): copied into the data root where missing (for machines without "
                             "internet); if it does not exist, the files are downloaded")  # fmt: skip
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
    parser.add_argument("--log-dir", default="lightning_logs",
                        help="each run logs to <log-dir>/version_N, as `lightning-fed` does (default: "
                             "lightning_logs)")  # fmt: skip
    return parser.parse_args(argv)


def find_mnist_files(source: str | Path) -> Path:
    """The folder under ``source`` holding the four MNIST .gz files: ``source`` itself, ``source/MNIST/raw`` or
    ``source/raw``. Raises ``SystemExit`` naming the places looked at when none holds all four."""
    source = Path(source)
    places = [source / "MNIST" / "raw", source / "raw", source]
    for place in places:
        if all((place / name).is_file() for name in MNIST_FILES):
            return place
    looked = ", ".join(repr(str(place)) for place in places)
    raise SystemExit(
        f"--mnist-from {str(source)!r}: none of {looked} holds the four MNIST files {', '.join(MNIST_FILES)}. "
        "Point --mnist-from at the folder that holds them (or its MNIST/raw parent), or leave it out to download."
    )


def copy_mnist_files(source: str | None, root: str) -> None:
    """Copy the four MNIST .gz files found by :func:`find_mnist_files` into ``root/MNIST/raw`` where missing.

    A ``source`` that does not exist is reported and skipped (the data module then downloads what is missing); one
    that exists without the files is an error naming where they must be.
    """
    if source is None:
        return
    if not Path(source).exists():
        print(f"--mnist-from {source!r} does not exist: the MNIST files will be downloaded into {root!r} instead.",
              file=sys.stderr)  # fmt: skip
        return
    found = find_mnist_files(source)
    target = Path(root) / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if not (target / name).exists():
            shutil.copyfile(found / name, target / name)


def make_logger(log_dir: str) -> Logger:
    """Lightning's default logger kind (TensorBoard when installed, else CSV), writing to ``log_dir/version_N``."""
    tensorboard = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    return (TensorBoardLogger if tensorboard else CSVLogger)(save_dir=log_dir, name="")


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
        logger=make_logger(args.log_dir),
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    schools = ", ".join(str(w.id) for w in data.workers)  # their table was logged once, at the end of fit
    print(f"\nTest accuracy after {args.epochs} {'rounds' if args.mode == 'fedavg' else 'epochs'} "
          f"({args.mode}, {args.partition}): {100 * result['test_acc']:.2f}%  (fit: {fit_seconds:.0f} s; "
          f"schools: {schools})")  # fmt: skip
    return {"test_acc": float(result["test_acc"]), "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main()
