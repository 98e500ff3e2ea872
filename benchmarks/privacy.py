"""The price of sample-level differential privacy: DP-SGD at each worker vs the same training without privacy.

Two schools, the CNN of Opacus' MNIST example, each school's expected batch 120 (Opacus' sample rate 0.004 of
30,000 images), FedAvg; ``--batches`` local batches per school per round. The private run computes per-sample
gradients (Opacus' hooks), clips, noises and accounts; the other trains on the same Poisson-free shuffled batches.
Both are timed interleaved in one run; the ratio is the median of the per-repeat ratios (goal: <= 1.6x). With
``--modes hooks ghost`` each ``DPConfig.grad_sample_mode`` is a contender of its own (Opacus' per-sample gradients
against the ghost clipper; ``auto`` picks ``ghost`` for this CNN). Real MNIST with ``--data-root``, synthetic
MNIST-shaped data otherwise (the cost does not depend on the pixels).

    python benchmarks/privacy.py --data-root data
    python benchmarks/privacy.py --data-root data --opacus ghost hooks   # with Opacus' own ratio beside
    python benchmarks/privacy.py --data-root data --channels-last        # every contender in channels-last format
    python benchmarks/privacy.py --smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    format_table,
    interleaved,
    machine_info,
    mnist_like,
    print_json_line,
    print_machine,
    ratios,
    summary,
)
from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.models import MNISTClassifier
from lightning_fed.privacy.dp import DPConfig


class Classifier(MNISTClassifier):
    """The DP example's classifier; with ``channels_last`` its convolutions, pools and inputs run in torch's
    channels-last memory format (torch's CPU ``max_pool2d`` is several times faster there)."""

    def __init__(self, channels_last: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_format = memory_format(channels_last)
        self.net.to(memory_format=self.memory_format)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.nll_loss(self(batch[0].contiguous(memory_format=self.memory_format)), batch[1])


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def load_data(args: argparse.Namespace) -> TensorDataset:
    return mnist_like(args.data_root, args.samples)


CPU_TIMES: dict[str | None, list[float]] = {}


def fit(dataset: TensorDataset, args: argparse.Namespace, mode: str | None) -> float:
    """One timed fit: without privacy (``mode=None``) or DP-SGD with ``DPConfig(grad_sample_mode=mode)``; returns
    the wall time and keeps the process's CPU time (all threads) in ``CPU_TIMES[mode]``."""
    data = FederatedDataModule.from_datasets(dataset, workers=2, batch_size=args.batch_size, seed=0)
    privacy = None
    if mode is not None:
        privacy = DPConfig(level="sample", noise_multiplier=1.1, max_grad_norm=1.0, seed=0, grad_sample_mode=mode)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        strategy=FederatedStrategy(privacy=privacy, local_steps=args.batches, seed=0), accelerator="cpu", devices=1,
        max_epochs=args.rounds, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(Classifier(args.channels_last, architecture="dp_cnn", lr=0.25), datamodule=data)
    CPU_TIMES.setdefault(mode, []).append(time.process_time() - cpu)
    return time.perf_counter() - start


def plain_loop(dataset: TensorDataset, args: argparse.Namespace, opacus_mode: str | None) -> float:
    """Opacus' own price, for reference: ``2 * batches * rounds`` steps of the same CNN, batch and learning rate in a
    plain PyTorch loop (no Lightning, no federation), without privacy (``opacus_mode=None``) or through Opacus'
    ``PrivacyEngine.make_private`` with ``grad_sample_mode=opacus_mode`` (``"ghost"``: its fast gradient clipping;
    ``"hooks"``: per-sample gradients); fixed batches, as the ratio does not depend on the sampling. Returns seconds."""
    from opacus import PrivacyEngine

    from lightning_fed.models import DPMNISTCNN

    torch.manual_seed(0)
    layout = memory_format(args.channels_last)
    model = DPMNISTCNN().to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    criterion = torch.nn.NLLLoss()
    if opacus_mode is not None:
        made = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0,
            grad_sample_mode=opacus_mode, poisson_sampling=False,
            **({"criterion": criterion} if opacus_mode == "ghost" else {}),
        )  # fmt: skip
        model, optimizer, criterion = made[0], made[1], (made[2] if opacus_mode == "ghost" else criterion)
    batches = []
    for batch in loader:  # read before timing: the federated runs read their batches at the workers, untimed apart
        batches.append(batch)
        if len(batches) == 2 * args.batches * args.rounds:
            break
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        criterion(model(x.contiguous(memory_format=layout)), y).backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: synthetic data)")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--batches", type=int, default=100, help="local batches per school per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["auto"], choices=["auto", "ghost", "hooks"],
                        help="DPConfig.grad_sample_mode of each DP contender")  # fmt: skip
    parser.add_argument("--opacus", nargs="*", default=[], choices=["ghost", "hooks"],
                        help="also time Opacus' own DP-SGD with these grad_sample_modes against the same plain loop "
                             "without privacy, for reference (Opacus' own ratio on this machine)")  # fmt: skip
    parser.add_argument("--channels-last", action="store_true",
                        help="every contender's model and inputs in torch's channels-last memory format")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, help="also print the top N cProfile rows of one DP fit")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.smoke:
        args.samples, args.batch_size, args.batches, args.rounds, args.repeats, args.data_root = 200, 20, 2, 1, 1, None
    info = machine_info()
    print_machine(info)
    dataset = load_data(args)
    runs = {"non-private": lambda: fit(dataset, args, None)}
    for mode in args.modes:
        runs[f"DP-SGD ({mode})"] = lambda mode=mode: fit(dataset, args, mode)
    if args.opacus:
        runs["plain loop"] = lambda: plain_loop(dataset, args, None)
        for mode in args.opacus:
            runs[f"plain loop, Opacus ({mode})"] = lambda mode=mode: plain_loop(dataset, args, mode)
    times = interleaved(runs, args.repeats)
    steps = 2 * args.batches * args.rounds
    layout = ", channels last" if args.channels_last else ""
    print(f"\n2 schools, Opacus' MNIST CNN{layout}, batch {args.batch_size}, {args.batches} batches per school per "
          f"round, {args.rounds} rounds ({steps} steps); {args.repeats} interleaved repeats")  # fmt: skip
    rows = [[name, summary(v)["median"], 1000 * summary(v)["median"] / steps] for name, v in times.items()]
    print(format_table(["run", "fit s (median)", "ms/step"], rows))
    cpu_rows = [[name, summary(CPU_TIMES[m])["median"]] for name, m in zip(times, [None, *args.modes])]  # fits
    print(format_table(["run", "process CPU s (median)"], cpu_rows))
    ratio, cpu_ratio = {}, {}
    for mode in args.modes:
        ratio[mode] = r = ratios(times[f"DP-SGD ({mode})"], times["non-private"])
        cpu_ratio[mode] = c = ratios(CPU_TIMES[mode], CPU_TIMES[None])
        print(f"DP-SGD ({mode}) / non-private: {r['median']:.2f}x wall (min {r['min']:.2f}, max {r['max']:.2f}), "
              f"{c['median']:.2f}x CPU (min {c['min']:.2f}, max {c['max']:.2f}); goal 1.6x")  # fmt: skip
    opacus_ratio = {}
    for mode in args.opacus:
        opacus_ratio[mode] = r = ratios(times[f"plain loop, Opacus ({mode})"], times["plain loop"])
        print(f"for reference, Opacus ({mode}) / the same plain loop without privacy: {r['median']:.2f}x "
              f"(min {r['min']:.2f}, max {r['max']:.2f})")  # fmt: skip
    cpu_times = {str(k): summary(v) for k, v in CPU_TIMES.items()}  # before the profiled fit adds its own
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(fit, dataset, args, args.modes[-1])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    print_json_line({"benchmark": "privacy", "machine": info, "config": vars(args),
                     "times": {k: summary(v) for k, v in times.items()}, "ratio": ratio,
                     "cpu_times": cpu_times, "cpu_ratio": cpu_ratio, "opacus_ratio": opacus_ratio})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
