"""McMahan et al. 2017, Table 2 (MNIST CNN): communication rounds for FedAvg to reach 99% test accuracy.

McMahan's MNIST CNN (5x5 conv 32, 2x2 pool, 5x5 conv 64, 2x2 pool, FC 512, softmax; 1,663,370 parameters), 100
clients of 600 training images, C = 0.1 (10 clients a round), SGD without momentum; IID (a shuffled split) or
pathological non-IID (the images sorted by label, 200 shards of 300, 2 shards a client). After every round the
global model is tested on the 10,000 MNIST test images; the run stops at the first round reaching ``--target``.
The paper's rounds (with its best learning rate for each row): E=5, B=10: 20 IID, 229 non-IID; E=1, B=10: 34 / 350.

    python benchmarks/mcmahan.py --data-root data --local-epochs 5 --batch-size 10 --partition iid
    python benchmarks/mcmahan.py --data-root data --local-epochs 1 --batch-size 10 --partition iid
    python benchmarks/mcmahan.py --smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, machine_info, print_json_line, print_machine
from lightning_fed import FederatedStrategy
from lightning_fed.datasets import FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier

PAPER_ROUNDS = {("iid", 5, 10): 20, ("shards", 5, 10): 229, ("iid", 1, 10): 34, ("shards", 1, 10): 350}


class RoundLog(pl.Callback):
    """Test accuracy after every round (the validation set is MNIST's test set); stops at the target."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.history: list[dict[str, float]] = []
        self.reached: int | None = None
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = float(trainer.callback_metrics["val_acc"])
        rounds = trainer.strategy.round_index
        self.history.append({"round": rounds, "test_acc": acc, "seconds": time.perf_counter() - self._start})
        print(f"round {rounds:4d}: test accuracy {100 * acc:.2f}%  ({time.perf_counter() - self._start:.0f} s)",
              flush=True)  # fmt: skip
        if self.reached is None and acc >= self.target:
            self.reached = rounds
            trainer.should_stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--partition", choices=["iid", "shards"], default="iid")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1, help="C: the fraction of clients a round")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--max-rounds", type=int, default=100)
    parser.add_argument("--vectorize", action="store_true", help="FederatedStrategy(vectorize=True)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny generated MNIST files, 2 rounds")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.smoke:
        import tempfile

        from tests.helpers.mnist_files import write_mnist_raw

        args.data_root = tempfile.mkdtemp()
        write_mnist_raw(args.data_root, num_train=200, num_test=50)
        args.clients, args.max_rounds, args.local_epochs, args.target = 10, 2, 1, 1.01
    info = machine_info()
    print_machine(info)
    pl.seed_everything(args.seed, workers=True)
    data = FederatedMNISTDataModule(
        root=args.data_root, workers=args.clients, partition=args.partition,
        shards_per_worker=2 if args.partition == "shards" else None, batch_size=args.batch_size,
        test_batch_size=1000, seed=args.seed,
    )  # fmt: skip
    model = MNISTClassifier(architecture="mcmahan_cnn", lr=args.lr)
    log = RoundLog(args.target)
    strategy = FederatedStrategy(local_epochs=args.local_epochs, client_fraction=args.fraction, seed=args.seed,
                                 vectorize=args.vectorize)  # fmt: skip
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=1, max_epochs=args.max_rounds, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[log],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    paper = PAPER_ROUNDS.get((args.partition, args.local_epochs, args.batch_size))
    best = max((h["test_acc"] for h in log.history), default=0.0)
    row: dict[str, Any] = {
        "partition": args.partition, "E": args.local_epochs, "B": args.batch_size, "lr": args.lr,
        "rounds_to_target": log.reached, "paper_rounds": paper, "best_test_acc": best,
        "rounds_run": trainer.strategy.round_index, "wall_s": seconds,
        "s_per_round": seconds / max(1, trainer.strategy.round_index),
    }  # fmt: skip
    print(format_table(
        ["partition", "E", "B", "lr", f"rounds to {100 * args.target:g}%", "paper", "best acc", "rounds run", "wall s"],
        [[row["partition"], row["E"], row["B"], row["lr"], row["rounds_to_target"] or f"> {row['rounds_run']}",
          paper, f"{100 * best:.2f}%", row["rounds_run"], row["wall_s"]]],
    ))  # fmt: skip
    print_json_line({"benchmark": "mcmahan", "machine": info, "config": vars(args), "result": row,
                     "history": log.history})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
