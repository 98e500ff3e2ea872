"""Vectorized workers vs sequential: many small clients, one round's workers trained together under torch.vmap.

Workload B of the benchmarks: 100 clients, McMahan et al.'s 2NN (784-200-200-10), batch 10, 10 clients a round,
one local epoch, SGD, on MNIST-shaped data (real MNIST with ``--data-root``, synthetic otherwise), each client
holding ``--samples-per-client`` images. Contenders, timed interleaved in one run (ratios of the same repeat):

* ``plain``: a sequential plain PyTorch loop over exactly the same samples (the round's clients one after another,
  model copies and FedAvg by hand): what running workers one after another costs without any framework;
* ``sequential``: ``FederatedStrategy()``;
* ``vectorized``: ``FederatedStrategy(vectorize=True)``.

Then time per round as the workers per round grow (``--scaling``), vectorized vs sequential. The final models of
the two strategies are compared (max abs difference) so the speed is not bought with a different result.

Then ``vectorize="auto"`` (``--auto-models``, default McMahan's CNN and the 2NN, on the same clients): sequential,
vectorized and auto, interleaved, ``--auto-rounds`` rounds each; per model the path auto chose, its measurement's
timings, and auto's time over the faster of the other two in the same repeat (the acceptance: at most 1.05).

    python benchmarks/vectorized.py --data-root data
    python benchmarks/vectorized.py --data-root data --auto-only        # only the vectorize="auto" table
    python benchmarks/vectorized.py --smoke
    python benchmarks/vectorized.py --profile mcmahan_cnn    # where a step's time goes, sequential vs vectorized
"""

from __future__ import annotations

import argparse
import copy
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
from lightning_fed.data.partition import iid
from lightning_fed.models import MNISTClassifier
from lightning_fed.rounds.planning import sample_clients


class Classifier(MNISTClassifier):
    """The 2NN; logs nothing per step (the strategies log each worker's mean loss once a round)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.nll_loss(self(batch[0]), batch[1])


def load_data(args: argparse.Namespace, num_clients: int) -> TensorDataset:
    return mnist_like(args.data_root, num_clients * args.samples_per_client)


def fit_strategy(
    dataset: TensorDataset,
    args: argparse.Namespace,
    vectorize: bool | str,
    clients: int,
    per_round: int,
    rounds: int,
    trainer_kw: dict[str, Any] | None = None,
    architecture: str = "mcmahan_2nn",
) -> tuple[float, pl.LightningModule]:
    """Fit FedAvg on ``dataset``; ``trainer_kw`` overrides the Trainer's arguments (``accelerator``, ``callbacks``)."""
    data = FederatedDataModule.from_datasets(dataset, workers=clients, batch_size=args.batch_size, seed=0)
    torch.manual_seed(0)
    model = Classifier(architecture=architecture, lr=args.lr)
    trainer = pl.Trainer(**{
        "strategy": FederatedStrategy(clients_per_round=per_round, vectorize=vectorize, seed=0), "accelerator": "cpu",
        "devices": 1, "max_epochs": rounds, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0, **(trainer_kw or {}),
    })  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - start, model


def fit_plain(dataset: TensorDataset, args: argparse.Namespace, clients: int, per_round: int, rounds: int) -> float:
    """The same rounds as a plain loop: each sampled client trains a copy of the model, then FedAvg by hand."""
    indices = [torch.as_tensor(part) for part in iid(len(dataset), clients, seed=0)]  # the same split as the strategy
    x, y = dataset.tensors
    torch.manual_seed(0)
    model = Classifier(architecture="mcmahan_2nn", lr=args.lr).net
    start = time.perf_counter()
    for r in range(rounds):
        total = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
        weight = 0
        for client in sample_clients(clients, per_round, 0, r):
            local = copy.deepcopy(model)
            opt = torch.optim.SGD(local.parameters(), lr=args.lr)
            order = indices[client][torch.randperm(len(indices[client]))]
            for batch in order.split(args.batch_size):
                opt.zero_grad()
                F.nll_loss(local(x[batch]), y[batch]).backward()
                opt.step()
            n = len(order)
            for t, p in zip(total, local.parameters()):
                t.add_(p.detach().double(), alpha=n)
            weight += n
        with torch.no_grad():
            for p, t in zip(model.parameters(), total):
                p.copy_(t / weight)
    return time.perf_counter() - start


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: synthetic data)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scaling", type=int, nargs="*", default=[10, 50, 100],
                        help="workers per round for the scaling table (all clients take part)")  # fmt: skip
    parser.add_argument("--scaling-rounds", type=int, default=2)
    parser.add_argument("--auto-models", nargs="*", default=["mcmahan_cnn", "mcmahan_2nn"],
                        help="models for the vectorize='auto' table (none: skip it)")  # fmt: skip
    parser.add_argument("--auto-rounds", type=int, default=2)
    parser.add_argument("--auto-only", action="store_true", help="only the vectorize='auto' table")
    parser.add_argument("--profile", default=None, metavar="MODEL",
                        help="only the top operators of a local step, sequential vs vectorized")  # fmt: skip
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the tables, not fit banners
    if args.smoke:
        args.clients, args.per_round, args.samples_per_client, args.rounds, args.repeats = 6, 3, 20, 1, 1
        args.scaling, args.scaling_rounds, args.data_root, args.auto_rounds = [2, 4], 1, None, 1
    info = machine_info()
    print_machine(info)
    if args.profile:
        profile_step(args.profile, args.per_round, args.batch_size)
        return 0
    dataset = load_data(args, max(args.clients, *args.scaling) if args.scaling else args.clients)
    b, k, r = args.clients, args.per_round, args.rounds
    if args.auto_only:
        auto = auto_table(dataset, args)
        print_json_line({"benchmark": "vectorized_auto", "machine": info, "config": vars(args), "auto": auto})
        return 0
    models: dict[str, Any] = {}

    def timed(name: str, vectorize: bool) -> float:
        seconds, models[name] = fit_strategy(dataset, args, vectorize, b, k, r)
        return seconds

    times = interleaved(
        {
            "plain": lambda: fit_plain(dataset, args, b, k, r),
            "sequential": lambda: timed("sequential", False),
            "vectorized": lambda: timed("vectorized", True),
        },
        args.repeats,
    )
    difference = max_abs_diff(models["sequential"], models["vectorized"])
    rows = [[name, summary(values)["median"], summary(values)["median"] / r] for name, values in times.items()]
    print(f"\nWorkload B: {b} clients x {args.samples_per_client} images, 2NN, batch {args.batch_size}, {k} clients a "
          f"round, 1 local epoch, {r} rounds; {args.repeats} interleaved repeats")  # fmt: skip
    print(format_table(["contender", "fit s (median)", "s/round"], rows))
    speedups = {
        "sequential/vectorized": ratios(times["sequential"], times["vectorized"]),
        "plain/vectorized": ratios(times["plain"], times["vectorized"]),
        "sequential/plain": ratios(times["sequential"], times["plain"]),
    }
    for name, ratio in speedups.items():
        print(f"{name}: {ratio['median']:.2f}x (min {ratio['min']:.2f}, max {ratio['max']:.2f})")
    print(f"max |sequential - vectorized| over parameters after {r} rounds: {difference:.2e}")

    scaling = []
    for per_round in args.scaling:
        part = TensorDataset(*(t[: per_round * args.samples_per_client] for t in dataset.tensors))
        seq, seq_model = fit_strategy(part, args, False, per_round, per_round, args.scaling_rounds)
        vec, vec_model = fit_strategy(part, args, True, per_round, per_round, args.scaling_rounds)
        scaling.append({"workers_per_round": per_round, "sequential_s_per_round": seq / args.scaling_rounds,
                        "vectorized_s_per_round": vec / args.scaling_rounds, "speedup": seq / vec,
                        "max_abs_diff": f"{max_abs_diff(seq_model, vec_model):.2e}"})  # fmt: skip
    if scaling:
        print(f"\nTime per round as workers per round grow ({args.samples_per_client} images each, all take part):")
        print(format_table(
            ["workers/round", "sequential s/round", "vectorized s/round", "speedup", "max abs diff"],
            [[s["workers_per_round"], s["sequential_s_per_round"], s["vectorized_s_per_round"], s["speedup"],
              s["max_abs_diff"]] for s in scaling],
        ))  # fmt: skip
    auto = auto_table(dataset, args)
    print_json_line({
        "benchmark": "vectorized", "machine": info, "config": vars(args),
        "times": {name: summary(v) for name, v in times.items()}, "speedups": speedups,
        "max_abs_diff": f"{difference:.2e}", "scaling": scaling, "auto": auto,
    })  # fmt: skip
    return 0


def profile_step(architecture: str, workers: int, batch_size: int, rows: int = 12) -> None:
    """torch.profiler's top operators (self CPU time) of ``workers`` local steps of one worker after another and of one
    vectorized step of ``workers`` workers (after warm-ups), with the timings ``vectorize="auto"`` measures."""
    from torch.profiler import ProfilerActivity, profile

    from lightning_fed.backends.vectorized import choose

    torch.manual_seed(0)
    model = Classifier(architecture=architecture, lr=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,)))
    ids = [argparse.Namespace(id=f"w{i}") for i in range(workers)]
    choice = choose.measure(model, optimizer, batch, ids)
    print(f"{architecture}, {workers} workers, batch {batch_size}: {choice} (measured in {choice.measure_s:.2f} s)")
    sequential = choose.sequential_step(model, optimizer, batch)
    vectorized = choose.vectorized_step(model, optimizer, batch, ids)
    sequential(0), vectorized(0)  # warm-ups
    for name, run in (("sequential", lambda: [sequential(i) for i in range(workers)]),
                      ("vectorized", lambda: vectorized(1))):  # fmt: skip
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n{name}: " + (f"{workers} steps of one worker" if name == "sequential" else f"one step of {workers}"))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def auto_table(dataset: TensorDataset, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sequential, vectorized and ``vectorize="auto"`` per model in ``--auto-models``, interleaved; prints a table
    with auto's time over the faster of the other two (per repeat, then the median) and what auto chose."""
    rows, out = [], []
    b, k, r = args.clients, args.per_round, args.auto_rounds
    dataset = TensorDataset(*(t[: b * args.samples_per_client] for t in dataset.tensors))  # b clients' images
    for architecture in args.auto_models:
        choices: list[Any] = []

        def timed(vectorize: bool | str, architecture: str = architecture, choices: list = choices) -> float:
            seconds, model = fit_strategy(dataset, args, vectorize, b, k, r, architecture=architecture)
            if vectorize == "auto":
                choices.append(model.trainer.strategy.vectorize_choice)
            return seconds

        times = interleaved({"sequential": lambda: timed(False), "vectorized": lambda: timed(True),
                             "auto": lambda: timed("auto")}, args.repeats)  # fmt: skip
        faster = [min(s, v) for s, v in zip(times["sequential"], times["vectorized"])]
        over = ratios(times["auto"], faster)
        picked = ", ".join(sorted({"vectorized" if c.vectorize else "sequential" for c in choices}))
        speedups = [c.speedup for c in choices if c.speedup is not None]
        measured = max(c.measure_s for c in choices)
        median = {name: summary(values)["median"] / r for name, values in times.items()}
        rows.append([architecture, median["sequential"], median["vectorized"], median["auto"], picked,
                     f"{min(speedups):.2f}-{max(speedups):.2f}" if speedups else "-", measured,
                     f"{over['median']:.3f} ({over['min']:.3f}-{over['max']:.3f})"])  # fmt: skip
        out.append({"model": architecture, "times": {n: summary(v) for n, v in times.items()}, "auto_over_faster": over,
                    "chose": picked, "measure_s": measured, "choices": [str(c) for c in choices]})  # fmt: skip
    if rows:
        print(f"\nvectorize='auto': {b} clients x {args.samples_per_client} images, {k} a round, batch "
              f"{args.batch_size}, {r} rounds, {args.repeats} interleaved repeats (s/round: medians)")  # fmt: skip
        print(format_table(
            ["model", "sequential", "vectorized", "auto", "auto chose", "measured seq/vec", "measure s",
             "auto / faster (min-max)"], rows,
        ))  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
