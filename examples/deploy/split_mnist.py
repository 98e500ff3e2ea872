"""Split MNIST's training set into one folder per school, as each school would hold its own images.

Each school's folder gets IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``) with its share of the
60,000 training images (IID, seeded), in the layout ``lightning-fed worker --data mnist-train=FOLDER`` reads. The
server keeps only the public test set.

    python examples/deploy/split_mnist.py --mnist data/MNIST/raw --out schools --sites alice bob [--per-site 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lightning_fed.transport.site_data import read_idx, write_idx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True, help="the folder with MNIST's IDX files (.gz or not)")
    parser.add_argument("--out", required=True, help="where each school's folder is written")
    parser.add_argument("--sites", nargs="+", required=True, help="the schools' ids")
    parser.add_argument("--per-site", type=int, default=None, help="images per school (default: an equal share)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = Path(args.mnist)
    find = lambda name: next(p for p in (raw / name, raw / f"{name}.gz") if p.is_file())  # noqa: E731
    images, labels = read_idx(find("train-images-idx3-ubyte")), read_idx(find("train-labels-idx1-ubyte"))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    share = args.per_site or len(images) // len(args.sites)
    for k, site in enumerate(args.sites):
        rows = order[k * share : (k + 1) * share]
        folder = Path(args.out) / site
        folder.mkdir(parents=True, exist_ok=True)
        write_idx(folder / "train-images-idx3-ubyte", images[rows])
        write_idx(folder / "train-labels-idx1-ubyte", labels[rows])
        print(f"{site}: {len(rows)} training images in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
