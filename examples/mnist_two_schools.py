"""The seed tutorial's two schools, as a Lightning app: Westside School and Grapevine High train one MNIST classifier
without pooling their handwriting.

The model is the seed's CNN (``lightning_fed.models.SeedCNN``) in an ordinary LightningModule; the only federated
lines are the datamodule (MNIST split between the schools) and ``Trainer(strategy=FederatedStrategy(...))``.

Run (offline, with the four MNIST files in ``data/MNIST/raw``):
    python examples/mnist_two_schools.py --data-root data                  # the fast recipe: 99% in minutes
    python examples/mnist_two_schools.py --data-root data --recipe seed    # the seed's plain SGD, 10 rounds
    python examples/mnist_two_schools.py --data-root data --partition dirichlet --alpha 0.3 --mode follow
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_fed import FederatedStrategy
from lightning_fed.cli import (
    HelpFormatter,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    seed_int,
    writable_folder,
)
from lightning_fed.datasets import MNIST_FILES, FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier

# The seed's recipe trains 10 rounds of plain SGD; "fast" reaches 99% in fewer rounds: SGD with momentum, its last two
# rounds at a tenth of the rate (measured: docs/results.md)
RECIPES = {
    "fast": {"epochs": 6, "lr": 0.05, "momentum": 0.9, "batch_size": 64, "lr_decay_at": [4]},
    "seed": {"epochs": 10, "lr": 0.01, "momentum": 0.0, "batch_size": 64, "lr_decay_at": []},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (downloaded there if missing)")
    parser.add_argument("--mnist-from", type=mnist_source, default=None,
                        help="a folder holding the four MNIST .gz files (itself, or in its MNIST/raw or raw "
                             "subfolder): copied into the data root where missing (for machines without "
                             "internet); leave it out to download them")  # fmt: skip
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="fast",
                        help="fast: SGD lr 0.05 with momentum 0.9, 6 rounds, the last two at lr 0.005: past 99%% "
                             "in a few minutes on a 2-core CPU; seed: the tutorial's own plain SGD, lr 0.01, 10 "
                             "rounds. --epochs, --lr, --momentum, --lr-decay-at and --batch-size override the "
                             "recipe's")  # fmt: skip
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="rounds (fedavg) or epochs (follow) (default: the recipe's, fast 6, seed 10)")  # fmt: skip
    parser.add_argument("--mode", choices=["fedavg", "follow"], default="fedavg",
                        help="fedavg: rounds of local training + averaging; follow: the seed's way, the model "
                             "follows each batch to its school")  # fmt: skip
    parser.add_argument(
        "--partition",
        choices=["iid", "dirichlet"],
        default="iid",
        help="how MNIST is split between the schools: iid, or a Dirichlet label skew (--alpha)",
    )
    parser.add_argument(
        "--alpha",
        type=positive_float,
        default=0.3,
        help="Dirichlet concentration, lower is more skewed (with --partition dirichlet)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="each school's batch size (default: the recipe's, 64)"
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="SGD learning rate (default: the recipe's, fast 0.05, seed 0.01)",
    )
    parser.add_argument(
        "--momentum",
        type=non_negative_float,
        default=None,
        help="SGD momentum (default: the recipe's, fast 0.9, seed 0)",
    )
    parser.add_argument("--lr-decay-at", type=positive_int, nargs="*", default=None, metavar="ROUND",
                        help="rounds (epochs in follow mode), counted from 0, from which the learning rate is a "
                             "tenth of the one before (default: the recipe's, fast 4, seed none); give the "
                             "option alone for a constant rate")  # fmt: skip
    parser.add_argument("--parallel-workers", type=positive_int, default=1,
                        help="schools that train at the same time, one thread each (FederatedStrategy("
                             "parallel_workers=...), fedavg mode only). 1: one school after the other, the "
                             "seed's way; on this project's 2-core CPU, 2 at a time gained little for the seed's "
                             "CNN (docs/benchmarks.md)")  # fmt: skip
    parser.add_argument("--accelerator", default="auto", help="Lightning's accelerator: auto (a GPU if any), cpu, gpu")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the split, the model and the batches")
    parser.add_argument("--limit-train-batches", type=fraction, default=1.0, help="fraction of each round (smoke runs)")
    parser.add_argument("--limit-test-batches", type=fraction, default=1.0, help="fraction of the test set")
    parser.add_argument("--log-dir", type=writable_folder, default="lightning_logs",
                        help="each run logs to <log-dir>/version_N, as `lightning-fed` does")  # fmt: skip
    args = parser.parse_args(argv)
    for name, value in RECIPES[args.recipe].items():  # what the command line leaves unset comes from the recipe
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lr_decay_at != sorted(set(args.lr_decay_at)):
        parser.error(f"argument --lr-decay-at: rounds must increase, got {' '.join(map(str, args.lr_decay_at))}")
    return args


class RunClock(pl.Callback):
    """After each round: the time it took, the time since fit started, and an estimate of the time left (the mean
    round so far times the rounds to go)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.start = self.last = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = self.last = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now, done = time.perf_counter(), trainer.current_epoch + 1
        left = (now - self.start) / done * (self.rounds - done)
        print(f"round {done}/{self.rounds} took {_clock(now - self.last)}; {_clock(now - self.start)} elapsed, "
              f"about {_clock(left)} left", flush=True)  # fmt: skip
        self.last = now


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def find_mnist_files(source: str | Path) -> Path:
    """The folder under ``source`` holding the four MNIST .gz files: ``source`` itself, ``source/MNIST/raw`` or
    ``source/raw``. Raises ``FileNotFoundError`` naming the places looked at when none holds all four."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(
            f"{str(source)!r}: there is no such folder. Point --mnist-from at the folder that holds the four MNIST "
            f"files {', '.join(MNIST_FILES)} (or its MNIST/raw parent), or leave it out to download them."
        )
    places = [source / "MNIST" / "raw", source / "raw", source]
    for place in places:
        if all((place / name).is_file() for name in MNIST_FILES):
            return place
    looked = ", ".join(repr(str(place)) for place in places)
    raise FileNotFoundError(
        f"{str(source)!r}: none of {looked} holds the four MNIST files {', '.join(MNIST_FILES)}. Point --mnist-from "
        "at the folder that holds them (or its MNIST/raw parent), or leave it out to download."
    )


def mnist_source(text: str) -> str:
    """``--mnist-from``'s type: a folder that holds the four MNIST files (see :func:`find_mnist_files`)."""
    try:
        find_mnist_files(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def copy_mnist_files(source: str | None, root: str) -> None:
    """Copy the four MNIST .gz files found by :func:`find_mnist_files` into ``root/MNIST/raw`` where missing; a
    ``source`` without them (or that does not exist) exits with a line naming where they must be."""
    if source is None:
        return
    try:
        found = find_mnist_files(source)
    except FileNotFoundError as err:
        raise SystemExit(f"--mnist-from {err}") from None
    target = Path(root) / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if not (target / name).exists():
            shutil.copyfile(found / name, target / name)


def make_logger(log_dir: str) -> Logger:
    """Lightning's default logger kind (TensorBoard when installed, else CSV), writing to ``log_dir/version_N``."""
    tensorboard = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    return (TensorBoardLogger if tensorboard else CSVLogger)(save_dir=log_dir, name="")


def check_test_limit(data: FederatedMNISTDataModule, limit: float) -> None:
    """Refuse, before training, a ``--limit-test-batches`` that leaves no test batch: Lightning would find out only
    when ``trainer.test`` starts, after the whole fit."""
    data.prepare_data()
    data.setup("test")
    batches = len(data.test_dataloader())
    if int(limit * batches) < 1:  # Lightning's own rule for a fraction of the batches
        raise SystemExit(
            f"--limit-test-batches {limit}: {limit} of the {batches} test batch(es) is no batch at all, so the test "
            f"after training would fail. Pass at least {1 / batches:.3g} (one batch), or 1.0 for the whole test set."
        )


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
    check_test_limit(data, args.limit_test_batches)
    model = MNISTClassifier(lr=args.lr, momentum=args.momentum, lr_milestones=tuple(args.lr_decay_at))
    parallel = args.parallel_workers if args.mode == "fedavg" else 1
    trainer = pl.Trainer(
        strategy=FederatedStrategy(mode=args.mode, seed=args.seed, parallel_workers=parallel),
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        limit_train_batches=args.limit_train_batches,
        limit_test_batches=args.limit_test_batches,
        default_root_dir=args.log_dir,
        logger=make_logger(args.log_dir),
        deterministic=True,
        callbacks=[RunClock(args.epochs)],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    schools = ", ".join(str(w.id) for w in data.workers)  # their table was logged once, at the end of fit
    print(f"\nTest accuracy after {args.epochs} {'rounds' if args.mode == 'fedavg' else 'epochs'} "
          f"({args.mode}, {args.partition}, recipe {args.recipe}): {100 * result['test_acc']:.2f}%  (fit: "
          f"{fit_seconds:.0f} s; schools: {schools}; {parallel} at a time)")  # fmt: skip
    return {"test_acc": float(result["test_acc"]), "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main()
