"""Scale-out: one FedAvg workload in 1 process x 2 threads against 2 processes x 1 thread, and time per round as
the workers per process grow.

Each configuration is a fresh launch of this script (``--child``) with ``Trainer(devices=N)``: with ``N = 2``
Lightning's subprocess script launcher starts the second process and the round's aggregation runs over Gloo. A
callback on process 0 times every round from its start to its end (after the round's aggregation, when every process
has met); the first round is warm-up and left out. Launches of the contenders alternate (A B, then B A, ...), and
each also saves its final model, so the table shows that both trained the same model (max abs difference).

Workload: an MLP 784-512-512-10 (compute-bound steps), synthetic MNIST-shaped data, ``--workers`` workers of
``--samples`` samples each, batch 64, one local epoch, all workers every round.

    python benchmarks/scale_out.py             # the comparison (3 repeats) and the scaling sweep
    python benchmarks/scale_out.py --smoke     # a tiny version that still starts 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import format_table, machine_info, print_json_line, print_machine, summary  # noqa: E402


# -- one launch (``--child``): runs in every process Lightning starts ----------------------------------------------
def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import TensorDataset

    from lightning_fed import FederatedDataModule, FederatedStrategy
    from lightning_fed.models import MNISTClassifier

    class MLP(MNISTClassifier):
        def __init__(self, hidden: int) -> None:
            super().__init__(lr=0.01)
            self.net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(784, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 10),
                nn.LogSoftmax(dim=1),
            )

    class RoundClock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.times.append(time.perf_counter() - self._start)

    launched = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    n = args.workers * args.samples
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    datamodule = FederatedDataModule.from_datasets(data, workers=args.workers, batch_size=args.batch_size, seed=0)
    model = MLP(args.hidden)
    clock = RoundClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=FederatedStrategy(),
        max_epochs=args.rounds,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, datamodule=datamodule)
    if trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.params)
        record = {
            "round_s": clock.times,
            "total_s": time.perf_counter() - launched,
            "world_size": trainer.world_size,
            "threads": torch.get_num_threads(),
            "steps_per_round": trainer.global_step / args.rounds,
        }
        Path(args.out).write_text(json.dumps(record))


# -- the parent: launches the configurations and compares ----------------------------------------------------------
def launch(args: argparse.Namespace, devices: int, threads: int, workers: int, tmp: Path) -> dict[str, Any]:
    tag = f"d{devices}_t{threads}_w{workers}_{time.perf_counter_ns()}"
    out, params = tmp / f"{tag}.json", tmp / f"{tag}.pt"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"--devices={devices}",
        f"--threads={threads}",
        f"--workers={workers}",
        f"--samples={args.samples}",
        f"--rounds={args.rounds}",
        f"--hidden={args.hidden}",
        f"--batch-size={args.batch_size}",
        f"--out={out}",
        f"--params={params}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"launch {tag} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    record = json.loads(out.read_text())
    timed = record["round_s"][1:] or record["round_s"]  # the first round warms up
    record.update(
        round_median_s=statistics.median(timed),
        launch_s=wall,
        params=torch.load(params, weights_only=True),
    )
    return record


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check that it runs")
    parser.add_argument("--workers", type=int, default=4, help="workers in the comparison")
    parser.add_argument("--sweep", default="2,4,8,16", help="worker counts of the scaling sweep")
    parser.add_argument("--samples", type=int, default=256, help="samples per worker")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="launches of each contender in the comparison")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    # --child: one launch (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.workers, args.sweep, args.samples, args.rounds, args.repeats, args.hidden = 2, "2", 32, 2, 1, 32
        args.batch_size = 16
    info = machine_info()
    print_machine(info)
    # the two the question is about, and one process with one thread for scale
    contenders = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1), "1 process x 1 thread": (1, 1)}
    names = list(contenders)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for r in range(args.repeats):  # alternate the order: a slow spell on the shared machine hits all alike
            for name in names if r % 2 == 0 else reversed(names):
                runs[name].append(launch(args, *contenders[name], args.workers, tmp))
        reference = runs[names[0]][0]["params"]
        medians = {name: statistics.median(r["round_median_s"] for r in runs[name]) for name in names}
        comparison = {}
        rows = []
        for name in names:
            per_round = [r["round_median_s"] for r in runs[name]]
            comparison[name] = {
                "processes": contenders[name][0],
                "threads_per_process": contenders[name][1],
                "round_s": summary(per_round),
                "launch_s": summary([r["launch_s"] for r in runs[name]]),
                "speedup_vs_1x2": medians[names[0]] / medians[name],
                "speedup_vs_1x1": medians[names[2]] / medians[name],
                "max_param_diff_vs_1x2": max(max_diff(r["params"], reference) for r in runs[name]),
            }
            c = comparison[name]
            rows.append(
                [
                    name,
                    c["round_s"]["median"] * 1e3,
                    f"{c['round_s']['min'] * 1e3:.0f}-{c['round_s']['max'] * 1e3:.0f}",
                    c["speedup_vs_1x2"],
                    c["speedup_vs_1x1"],
                    c["launch_s"]["median"],
                    f"{c['max_param_diff_vs_1x2']:.1e}",
                ]
            )
        mlp = f"MLP 784-{args.hidden}-{args.hidden}-10"
        print(
            f"\nThe same FedAvg workload: {args.workers} workers x {args.samples} samples, {mlp}, batch "
            f"{args.batch_size}, {args.rounds} rounds ({args.repeats} launches each)\n"
        )
        headers = ["configuration", "ms/round", "min-max", "vs 1x2", "vs 1x1", "launch s", "max |Δparam| vs 1x2"]
        print(format_table(headers, rows))

        sweep = []
        rows = []
        for workers in [int(w) for w in args.sweep.split(",")]:
            entry: dict[str, Any] = {"workers": workers, "per_process": workers / 2}
            for name in names:
                found = runs[name][0] if workers == args.workers else launch(args, *contenders[name], workers, tmp)
                entry[name] = {"round_s": found["round_median_s"], "steps_per_round": found["steps_per_round"]}
            one, two, single = (entry[name]["round_s"] for name in names)
            entry["speedup_2x1_vs_1x2"] = one / two
            entry["speedup_2x1_vs_1x1"] = single / two
            sweep.append(entry)
            per_worker = two * 1e3 / workers
            rows.append([workers, f"{workers / 2:g}", one * 1e3, two * 1e3, single * 1e3, per_worker, one / two])
        print("\nTime per round as workers per process grow\n")
        headers = ["workers", "per process (2x1)", "1x2 ms/round", "2x1 ms/round", "1x1 ms/round", "2x1 ms/worker",
                   "2x1 vs 1x2"]  # fmt: skip
        print(format_table(headers, rows))

    print_json_line(
        {
            "benchmark": "scale_out",
            "machine": info,
            "config": {
                "smoke": args.smoke,
                "workers": args.workers,
                "samples_per_worker": args.samples,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "hidden": args.hidden,
                "batch_size": args.batch_size,
            },
            "comparison": comparison,
            "sweep": sweep,
        }
    )


if __name__ == "__main__":
    main()
