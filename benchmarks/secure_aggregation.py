"""Per-round cost of secure aggregation: FedAvg rounds with and without it, the same workload, interleaved.

100 workers (600 MNIST-shaped synthetic images each), 10 sampled a round, the seed's CNN (1.2M parameters), batch 64,
one local epoch. Secure aggregation quantizes each update to 64-bit fixed point and masks it with ChaCha20
keystreams (pairwise with the round's other participants, plus a self mask), Shamir-shares the seeds, and unmasks the
sum at the end of the round. The ratio is the median over repeats of (round time with) / (round time without).

    python benchmarks/secure_aggregation.py --repeats 3
    python benchmarks/secure_aggregation.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, interleaved, machine_info, print_json_line, print_machine, ratios, summary
from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.models import MNISTClassifier
from lightning_fed.secure_aggregation import SecureAggregationConfig


class _RoundClock(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, *args: Any) -> None:  # after the round's aggregation (at its last batch)
        self.seconds.append(time.perf_counter() - self._start)


def one_run(args: argparse.Namespace, secure: bool) -> float:
    g = torch.Generator().manual_seed(0)
    n = args.workers * args.samples_per_worker
    data = FederatedDataModule.from_datasets(
        TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)),
        workers=args.workers, batch_size=args.batch_size, seed=0,
    )  # fmt: skip
    clock = _RoundClock()
    strategy = FederatedStrategy(
        clients_per_round=args.clients_per_round,
        secure_aggregation=SecureAggregationConfig(seed=0) if secure else False,
    )
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_epochs=args.rounds, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[clock])  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(MNISTClassifier(), datamodule=data)
    return sum(clock.seconds[1:] or clock.seconds) / max(1, len(clock.seconds[1:] or clock.seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--samples-per-worker", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.clients_per_round, args.samples_per_worker, args.rounds, args.repeats = 4, 3, 64, 1, 1
    info = machine_info()
    print_machine(info)
    results = interleaved({"plain": lambda: one_run(args, False), "secure": lambda: one_run(args, True)}, args.repeats)
    r = ratios(results["secure"], results["plain"])
    print(format_table(
        ["round time plain (s)", "round time secure (s)", "ratio median", "min", "max"],
        [[summary(results["plain"])["median"], summary(results["secure"])["median"], r["median"], r["min"], r["max"]]],
    ))  # fmt: skip
    print_json_line({"benchmark": "secure_aggregation", "machine": info, "config": vars(args),
                     "plain_s_per_round": results["plain"], "secure_s_per_round": results["secure"],
                     "ratio": r})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
