"""Many virtual workers: time per round and memory as the federation grows (2, 10, 100, 1000 workers).

FedAvg with 10 workers a round (all when fewer), McMahan et al.'s 2NN (784-200-200-10), batch 10, ``local_steps``
batches per worker per round, on 60,000 synthetic MNIST-shaped samples split IID among the workers. Per federation
size: the median time per round, the share of it spent outside the model's forward, backward and optimizer step
(measured with hooks around them), and RSS after the first and the last round.

    python benchmarks/clients.py --rounds 100
    python benchmarks/clients.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, machine_info, print_json_line, print_machine, rss_mib
from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.models import MNISTClassifier


class TimedClassifier(MNISTClassifier):
    """The 2NN, timing its forward+loss, backward and optimizer step (the work centralized training also does)."""

    def __init__(self) -> None:
        super().__init__(architecture="mcmahan_2nn", lr=0.05)
        self.compute_s = 0.0
        self._t = 0.0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        start = time.perf_counter()
        loss = torch.nn.functional.nll_loss(self(batch[0]), batch[1])
        self.compute_s += time.perf_counter() - start
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().backward(loss, *args, **kwargs)
        self.compute_s += time.perf_counter() - start

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        if self._t:
            # optimizer.step() after the closure, up to the batch's end: slightly more than the step itself
            self.compute_s += time.perf_counter() - self._t
            self._t = 0.0


class RoundClock(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.compute: list[float] = []
        self.rss: list[float] = []
        self._start = 0.0
        self._compute0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: TimedClassifier) -> None:
        self._start = time.perf_counter()
        self._compute0 = module.compute_s

    def on_train_epoch_end(self, trainer: pl.Trainer, module: TimedClassifier) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.compute.append(module.compute_s - self._compute0)
        self.rss.append(rss_mib() or 0.0)


def run(num_workers: int, args: argparse.Namespace) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.samples, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (args.samples,), generator=g)
    data = FederatedDataModule.from_datasets(
        TensorDataset(images, labels), workers=num_workers, batch_size=args.batch_size, seed=0
    )
    clock = RoundClock()
    trainer = pl.Trainer(
        strategy=FederatedStrategy(clients_per_round=min(10, num_workers), local_steps=args.local_steps),
        accelerator="cpu", devices=1, max_epochs=args.rounds, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(TimedClassifier(), datamodule=data)
    timed = clock.seconds[1:] or clock.seconds
    outside = [1 - c / s for c, s in zip(clock.compute[1:] or clock.compute, timed)]
    return {
        "workers": num_workers,
        "s_per_round": statistics.median(timed),
        "share_outside_fwd_bwd_step": statistics.median(outside),
        "rss_first_mib": clock.rss[0],
        "rss_last_mib": clock.rss[-1],
        "rss_growth": clock.rss[-1] / clock.rss[0] - 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.rounds, args.samples, args.local_steps = [2, 20], 2, 400, 2
    info = machine_info()
    print_machine(info)
    results = [run(n, args) for n in args.workers]
    headers = ["workers", "s/round (median)", "share outside fwd/bwd/step", "RSS first (MiB)", "RSS last (MiB)"]
    print(format_table(
        [*headers, "RSS growth"],
        [[r["workers"], r["s_per_round"], r["share_outside_fwd_bwd_step"], r["rss_first_mib"], r["rss_last_mib"],
          f"{100 * r['rss_growth']:+.1f}%"] for r in results],
    ))  # fmt: skip
    print_json_line({"benchmark": "clients", "machine": info, "config": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
