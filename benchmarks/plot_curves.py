"""Plot per-round validation accuracy from Lightning CSV logs (``metrics.csv``) into one PNG.

    python benchmarks/plot_curves.py --out docs/img/mnist_two_schools_curves.png \
        "FedAvg, IID=outputs/fedavg_iid/lightning_logs/version_0/metrics.csv" \
        "seed's way, IID=outputs/follow_iid/lightning_logs/version_0/metrics.csv"
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_curve(path: str | Path, metric: str = "val_acc") -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of ``metric`` from a CSVLogger file, one point per epoch (the last logged value)."""
    by_epoch: dict[int, float] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get(metric) not in (None, "") and row.get("epoch") not in (None, ""):
                by_epoch[int(row["epoch"])] = float(row[metric])
    epochs = sorted(by_epoch)
    return [e + 1 for e in epochs], [by_epoch[e] for e in epochs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.csv")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metric", default="val_acc")
    parser.add_argument("--title", default="MNIST, two schools: test-set accuracy after each round")
    args = parser.parse_args(argv)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for run in args.runs:
        label, path = run.split("=", 1)
        epochs, values = read_curve(path, args.metric)
        ax.plot(epochs, [100 * v for v in values], marker="o", label=label)
        print(label, [f"{100 * v:.2f}" for v in values])
    ax.set_xlabel("round (epoch)")
    ax.set_ylabel(f"{args.metric} (%)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("saved", args.out)


if __name__ == "__main__":
    main()
