"""Would two workers training at once beat one after the other? The question behind the seed's third flaw
("sequential training"), measured before building anything for it.

Two copies of a model each take ``--steps`` SGD steps on their own batch (``training_step``-like: forward, NLL loss,
backward, step), three ways, interleaved ``--repeats`` times:

* ``sequential``: one copy after the other, torch's intra-op threads as they are (what lightning_fed's sequential
  path does: one worker at a time, all cores inside each operation);
* ``threads``: the two copies in two Python threads at once, each operation on one torch thread (torch releases the
  GIL inside its operations, so the two copies' arithmetic overlaps on two cores);
* ``sequential_1t``: one copy after the other at one torch thread (what ``threads`` would be without overlap).

Models: ``PflCNN`` (pfl-research's benchmark CNN, workload C of ``benchmarks/flower.py``), ``McMahan2NN`` and the
seed's CNN, at batch ``--batch-size``. Nothing here is lightning_fed code: it bounds what parallel workers could gain.

    python benchmarks/parallel_workers.py --steps 100 --repeats 5
    python benchmarks/parallel_workers.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, interleaved, machine_info, print_json_line, print_machine, ratios
from benchmarks.flower import MODELS


def copies(model: str, seed: int, batch_size: int) -> list[tuple[nn.Module, torch.optim.Optimizer, Any]]:
    """Two copies of ``model`` (same initial weights), each with its SGD optimizer and its own MNIST-shaped batch."""
    torch.manual_seed(seed)
    first = MODELS[model]()
    out = []
    for k in range(2):
        net = MODELS[model]()
        net.load_state_dict(first.state_dict())
        g = torch.Generator().manual_seed(seed + k)
        batch = (torch.randn(batch_size, 1, 28, 28, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
        out.append((net, torch.optim.SGD(net.parameters(), lr=0.05), batch))
    return out


def train(net: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, steps: int) -> None:
    x, y = batch
    for _ in range(steps):
        optimizer.zero_grad()
        F.nll_loss(net(x), y).backward()
        optimizer.step()


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def contenders(pair: list[Any], steps: int, threads: int) -> dict[str, Any]:
    def sequential() -> float:
        torch.set_num_threads(threads)
        return timed(lambda: [train(*c, steps) for c in pair])

    def in_threads() -> float:
        torch.set_num_threads(1)
        workers = [threading.Thread(target=train, args=(*c, steps)) for c in pair]

        def run() -> None:
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        elapsed = timed(run)
        torch.set_num_threads(threads)
        return elapsed

    def sequential_1t() -> float:
        torch.set_num_threads(1)
        elapsed = timed(lambda: [train(*c, steps) for c in pair])
        torch.set_num_threads(threads)
        return elapsed

    return {"sequential": sequential, "threads": in_threads, "sequential_1t": sequential_1t}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["pfl_cnn", "mcmahan_2nn", "seed_cnn"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=100, help="SGD steps per copy per measurement")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 steps, 2 repeats, one model: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.steps, args.repeats = ["mcmahan_2nn"], 2, 2
    info = machine_info()
    print_machine(info)
    threads = torch.get_num_threads()
    rows, results = [], {}
    for model in args.models:
        pair = copies(model, args.seed, args.batch_size)
        for c in pair:
            train(*c, 2)  # warm-up
        times = interleaved(contenders(pair, args.steps, threads), args.repeats)
        per_step = {name: 1e3 * min(values) / (2 * args.steps) for name, values in times.items()}
        gain = ratios(times["sequential"], times["threads"])
        results[model] = {"ms_per_step_fastest": per_step, "sequential/threads": gain, "times_s": times}
        rows.append([model, f"{per_step['sequential']:.2f}", f"{per_step['threads']:.2f}",
                     f"{per_step['sequential_1t']:.2f}",
                     f"{gain['median']:.2f}x ({gain['min']:.2f} / {gain['max']:.2f})"])  # fmt: skip
    print(f"\n## two copies, {args.steps} steps each, batch {args.batch_size}; ms per step (fastest of "
          f"{args.repeats}); torch threads for `sequential`: {threads}")  # fmt: skip
    print(format_table(["model", "sequential", "threads (2 x 1 thread)", "sequential, 1 thread",
                        "sequential / threads (median; min / max)"], rows))  # fmt: skip
    print_json_line({"benchmark": "parallel_workers", "machine": info, "config": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
