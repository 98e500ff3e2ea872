"""Encrypted MNIST with secret sharing: nobody sees the model or the images, only shares of them.

(a) **Encrypted classification.** A model owner trained a CNN; a school wants its images classified. Both secret-share
what they own among two servers (``bob``, ``alice``) with a crypto provider (``james``) dealing the correlated
randomness; the servers run the CNN on shares, and only the school reconstructs its predictions.

(b) **Encrypted training** (PySyft tutorial Part 12 bis): the 784-128-64-10 network and the training images are
shared; SGD runs on shares, with an MSE loss on one-hot labels; the test accuracy is computed on shares too and only
the count of correct predictions is reconstructed.

    python examples/mnist_encrypted.py --data-root data                   # MNIST at data/MNIST/raw/*.gz
    python examples/mnist_encrypted.py --data-root data --part train --train-images 60000
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lightning_fed as sy
from lightning_fed.cli import HelpFormatter, positive_float, positive_int
from lightning_fed.datasets import MNIST_FILES


def mnist_root(text: str) -> Path:
    """``--data-root``'s type: a folder whose MNIST/raw holds the four MNIST .gz files."""
    raw = Path(text) / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {str(raw)!r} lacks {', '.join(missing)}. Put the four MNIST .gz files in <data-root>/MNIST/raw "
            "(examples/mnist_two_schools.py --data-root DIR downloads them there, or copies them with --mnist-from)."
        )
    return Path(text)


def read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims).copy())


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    raw = root / "MNIST" / "raw"
    images = (read_idx(raw / f"{prefix}-images-idx3-ubyte.gz").float() / 255 - 0.1307) / 0.3081
    return images.unsqueeze(1), read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz").long()


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.view(-1, 800))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 784)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def classify(args: argparse.Namespace, hook: Any) -> float:
    bob, alice, james = (sy.VirtualWorker(hook, id=n) for n in ("bob", "alice", "james"))
    x_train, y_train = load(args.data_root, "train")
    x_test, y_test = load(args.data_root, "test")
    model = CNN()  # the model owner trains in the clear, on its own data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, min(args.train_images, len(x_train)), 64):
        opt.zero_grad()
        F.cross_entropy(model(x_train[i : i + 64]), y_train[i : i + 64]).backward()
        opt.step()
    x, y = x_test[: args.test_images], y_test[: args.test_images]
    with torch.no_grad():
        plain_acc = float((model(x).argmax(1) == y).float().mean())  # for comparison only: the owner's own check
    enc = {"base": 2, "precision_fractional": 16}
    model.fix_precision(**enc).share(bob, alice, crypto_provider=james)
    print("bob holds shares only, e.g.", next(iter(bob._objects.values())).flatten()[:3])
    correct, start = 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), 100):
            images = x[i : i + 100].fix_precision(**enc).share(bob, alice, crypto_provider=james)
            pred = model(images).argmax(dim=1).get().float_precision().long()  # the school reconstructs
            correct += int((pred == y[i : i + 100]).sum())
    acc = correct / len(x)
    print(f"(a) encrypted classification: {acc:.2%} of {len(x)} test images (plain model: {plain_acc:.2%}), "
          f"{(time.perf_counter() - start) / len(x) * 1e3:.0f} ms per image")  # fmt: skip
    return acc


def train(args: argparse.Namespace, hook: Any) -> float:
    workers = [sy.VirtualWorker(hook, id=f"worker{i + 1}") for i in range(2)]
    provider = sy.VirtualWorker(hook, id="crypto_provider")
    enc = {"base": 2, "precision_fractional": 16}

    def secret_share(t: torch.Tensor, requires_grad: bool = False) -> Any:
        return t.fix_precision(**enc).share(*workers, crypto_provider=provider, requires_grad=requires_grad)

    x_train, y_train = load(args.data_root, "train")
    x_test, y_test = load(args.data_root, "test")
    torch.manual_seed(0)
    model = Net().fix_precision(**enc).share(*workers, crypto_provider=provider, requires_grad=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr).fix_precision()
    n = min(args.train_images, len(x_train))
    for epoch in range(args.epochs):
        for i in range(0, n, args.batch_size):
            data = secret_share(x_train[i : i + args.batch_size], requires_grad=True)
            target = secret_share(F.one_hot(y_train[i : i + args.batch_size], 10).float())
            optimizer.zero_grad()
            output = model(data)
            loss = ((output - target) ** 2).sum().refresh() / output.shape[0]
            loss.backward()
            optimizer.step()
            if (i // args.batch_size) % 100 == 0:
                print(f"epoch {epoch + 1} batch {i // args.batch_size}: loss {loss.get().float_precision().item():.4f}")
    correct = 0
    with torch.no_grad():
        for i in range(0, min(args.test_images, len(x_test)), 500):
            pred = model(secret_share(x_test[i : i + 500])).argmax(dim=1)
            correct += pred.eq(secret_share(y_test[i : i + 500].float()).view_as(pred)).sum()
    acc = correct.get().float_precision().item() / min(args.test_images, len(x_test))
    print(f"(b) encrypted training: test accuracy {acc:.2%} (computed on shares)")
    return acc


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=mnist_root, default="data",
                        help="folder holding the four MNIST .gz files in MNIST/raw")  # fmt: skip
    parser.add_argument(
        "--part",
        choices=("all", "classify", "train"),
        default="all",
        help="classify: (a) encrypted classification; train: (b) encrypted training; all: both",
    )
    parser.add_argument(
        "--train-images",
        type=positive_int,
        default=6000,
        help="training images: the model owner's plain training in (a), the shared ones in (b)",
    )
    parser.add_argument("--test-images", type=positive_int, default=1000, help="test images classified on shares")
    parser.add_argument("--epochs", type=positive_int, default=1, help="epochs of encrypted training (b)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size of encrypted training (b)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate of encrypted training (b)")
    args = parser.parse_args(argv)
    result: dict[str, float] = {}
    with sy.TorchHook(torch) as hook:
        if args.part in ("all", "classify"):
            result["classify_acc"] = classify(args, hook)
        if args.part in ("all", "train"):
            result["train_acc"] = train(args, hook)
    return result


if __name__ == "__main__":
    main()
