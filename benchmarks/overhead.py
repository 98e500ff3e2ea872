"""Overhead of FederatedStrategy against centralized Lightning on the same sample stream, and FedAvg's accuracy.

Speed: per-step time of a Trainer.fit with (a) centralized Lightning (a plain DataLoader), (b) FederatedStrategy in
the seed's way (``mode="follow"``) and (c) FedAvg (2 workers, one round), over the same number of samples, for the
seed's CNN and a tiny MLP (which exposes per-step overhead). Contenders are interleaved in one run; each ratio is the
median of per-repeat ratios. The step time is measured between the first batch's start and the last batch's end.

The cost of privacy by default: FedAvg with the workers' default (strict) data-access policy against the same run
with no guard at all (``unguarded``: each worker's guard removed, as before policies were on by default), and against
the open policy. Goal (issue 16): strict / unguarded at most 1.03 on the tiny MLP and 1.01 on the seed's CNN.

Accuracy (``--accuracy --root DIR``): real MNIST, the seed's CNN, SGD lr 0.01, batch 64; FedAvg with 2 IID workers
for ``--rounds`` rounds against centralized Lightning for the same number of epochs (the same sample budget).

    python benchmarks/overhead.py                       # speed, synthetic MNIST-shaped data
    python benchmarks/overhead.py --accuracy --root data --rounds 3
    python benchmarks/overhead.py --models tiny_mlp --samples 25600 --repeats 15   # the policy's cost, tighter
    python benchmarks/overhead.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    format_table,
    interleaved,
    machine_info,
    print_json_line,
    print_machine,
    ratios,
    summary,
)
from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.models import MNISTClassifier


class TinyMLP(MNISTClassifier):
    """784-32-10: tiny enough that per-step overhead, not arithmetic, dominates."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr=lr)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10), nn.LogSoftmax(dim=1))


class _StepClock(pl.Callback):
    def __init__(self) -> None:
        self.start: float | None = None
        self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()
        self.steps += 1

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / max(1, self.steps - 1) if self.start is not None else float("nan")


def _trainer(callbacks: list[pl.Callback], accelerator: str = "cpu", **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        **kwargs,
    )


def _synthetic(samples: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(samples, 1, 28, 28, generator=g), torch.randint(0, 10, (samples,), generator=g))


def speed(args: argparse.Namespace) -> dict[str, Any]:
    dataset = _synthetic(args.samples)
    rows, record = [], {}
    for model_name, make_model in (("seed_cnn", lambda: MNISTClassifier()), ("tiny_mlp", lambda: TinyMLP())):
        if (args.smoke and model_name == "seed_cnn") or model_name not in args.models.split(","):
            continue

        def run(strategy: Any, federated: bool, make_model: Any = make_model, policy: str | None = None) -> float:
            clock = _StepClock()
            torch.manual_seed(0)
            model = make_model()
            if federated:
                data = FederatedDataModule.from_datasets(
                    dataset, workers=2, batch_size=args.batch_size, seed=0, policy=None if policy is None else "open"
                )
                if policy == "unguarded":
                    for worker in data.workers:
                        worker._guard = None  # no policy machinery at all: the baseline of its cost
                _trainer([clock], strategy=strategy, max_epochs=1).fit(model, datamodule=data)
            else:
                loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
                _trainer([clock], max_epochs=1).fit(model, train_dataloaders=loader)
            return clock.seconds_per_step

        results = interleaved(
            {
                "central": lambda: run(None, False),
                "follow": lambda: run(FederatedStrategy(mode="follow"), True),
                "fedavg": lambda: run(FederatedStrategy(), True),
                "fedavg_unguarded": lambda: run(FederatedStrategy(), True, policy="unguarded"),
                "fedavg_open": lambda: run(FederatedStrategy(), True, policy="open"),
            },
            args.repeats,
        )
        for name in ("unguarded", "open"):  # the strict default against no guard, and against the open policy
            base = results[f"fedavg_{name}"]
            r = ratios(results["fedavg"], base)
            rows.append([model_name, f"fedavg strict / {name}", 1e3 * summary(results["fedavg"])["median"],
                         1e3 * summary(base)["median"], r["median"], r["min"], r["max"]])  # fmt: skip
            record[f"{model_name}_strict_over_{name}_ratio"] = r["median"]
        for name in ("follow", "fedavg"):
            r = ratios(results[name], results["central"])
            rows.append([model_name, name, 1e3 * summary(results[name])["median"],
                         1e3 * summary(results["central"])["median"], r["median"], r["min"], r["max"]])  # fmt: skip
            record[f"{model_name}_{name}_ratio"] = r["median"]
            record[f"{model_name}_{name}_ms_per_step"] = 1e3 * summary(results[name])["median"]
        record[f"{model_name}_central_ms_per_step"] = 1e3 * summary(results["central"])["median"]
    print(format_table(["model", "strategy", "ms/step", "baseline ms/step", "ratio (median)", "min", "max"], rows))
    return record


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from lightning_fed.datasets import FederatedMNISTDataModule, MNISTDataModule

    results = {}
    for name in ("central", "fedavg"):
        pl.seed_everything(0, workers=True)
        model = MNISTClassifier(lr=0.01)
        clock = _StepClock()
        trainer = _trainer([clock], max_epochs=args.rounds, deterministic=True,
                           strategy=FederatedStrategy() if name == "fedavg" else "auto")  # fmt: skip
        if name == "fedavg":
            data = FederatedMNISTDataModule(root=args.root, batch_size=64, seed=0)
        else:
            data = MNISTDataModule(root=args.root, batch_size=64, seed=0)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_s = time.perf_counter() - start
        test = trainer.test(model, datamodule=data, verbose=False)[0]
        ms_per_step = 1e3 * clock.seconds_per_step
        results[name] = {"test_acc": float(test["test_acc"]), "fit_s": fit_s, "ms_per_step": ms_per_step}
        print(f"{name}: test accuracy {100 * test['test_acc']:.2f}%  fit {fit_s:.0f} s  "
              f"{1e3 * clock.seconds_per_step:.1f} ms/step", flush=True)  # fmt: skip
    gap = 100 * (results["central"]["test_acc"] - results["fedavg"]["test_acc"])
    print(f"accuracy gap (central - fedavg): {gap:.2f} points; goal: within 0.5")
    return {
        "rounds": args.rounds,
        "central_test_acc": results["central"]["test_acc"],
        "fedavg_test_acc": results["fedavg"]["test_acc"],
        "gap_points": gap,
        "central_ms_per_step": results["central"]["ms_per_step"],
        "fedavg_ms_per_step": results["fedavg"]["ms_per_step"],
        "step_time_ratio": results["fedavg"]["ms_per_step"] / results["central"]["ms_per_step"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6400, help="training samples per fit (speed)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="run the real-MNIST accuracy comparison instead")
    parser.add_argument("--root", default="data", help="data root holding MNIST/raw (accuracy)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: tiny sizes, MLP only")
    parser.add_argument("--models", default="seed_cnn,tiny_mlp", help="which models to time (speed)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.repeats = 256, 1
    info = machine_info()
    print_machine(info)
    record = accuracy(args) if args.accuracy else speed(args)
    print_json_line({"benchmark": "overhead", "mode": "accuracy" if args.accuracy else "speed",
                     "machine": info, **record})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
