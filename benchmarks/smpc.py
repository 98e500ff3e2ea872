"""Encrypted computation on real MNIST: (a) inference of a CNN with model and images secret-shared, (b) training
PySyft's Part 12 bis network (784-128-64-10, MSE on one-hot labels, or ``--loss ce``) with model and data
secret-shared.

Two share holders and a crypto provider (VirtualWorkers in this process), additive shares in Z_(2^64), fixed point
``base**precision_fractional``. (a) trains a CNN in plain float first (``--cnn seed``, the default: the seed
tutorial's, conv 1->32 3x3, conv 32->64 3x3, max-pool 2, FC 9216->128, FC 128->10, ReLU; ``--cnn pysyft``: PySyft's
conv 1->20 5x5, max-pool 2, conv 20->50 5x5, max-pool 2, FC 800->500, FC 500->10), then classifies a random subset of
the test images with both the plain and the shared model and reports both accuracies, the time per image and the
time per layer. (b) trains from the same
initialisation in plain float and shared, reports the seconds per batch (forward, backward, SGD step on shares;
sharing the batch is the data owner's preprocessing, timed apart) and the test accuracy of the shared model, computed
on shares (argmax, eq, sum; only the count is reconstructed).

    python benchmarks/smpc.py                       # both parts, real MNIST from /work/shared/data/MNIST/raw
    python benchmarks/smpc.py --part infer --cnn pysyft
    python benchmarks/smpc.py --part train --train-images 60000 --epochs 1
    python benchmarks/smpc.py --smoke               # tiny synthetic data, seconds
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_fed as sy
from benchmarks.common import machine_info, print_json_line, print_machine
from lightning_fed.smpc import provider
from lightning_fed.smpc.nn import fix_precision_module, share_module
from lightning_fed.smpc.parties import Parties

RAW = Path(os.environ.get("MNIST_RAW", "/work/shared/data/MNIST/raw"))
MEAN, STD = 0.1307, 0.3081


def _idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


def load_mnist(smoke: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if smoke:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (512,), generator=g)
        x = torch.randn(512, 1, 28, 28, generator=g) * 0.3
        x[torch.arange(512), 0, y * 2 + 3, 5:20] += 3.0  # a learnable class pattern
        return x[:384], y[:384], x[384:], y[384:]

    def images(name: str) -> torch.Tensor:
        return ((_idx(RAW / name).float() / 255 - MEAN) / STD).unsqueeze(1)

    return (
        images("train-images-idx3-ubyte.gz"),
        _idx(RAW / "train-labels-idx1-ubyte.gz").long(),
        images("t10k-images-idx3-ubyte.gz"),
        _idx(RAW / "t10k-labels-idx1-ubyte.gz").long(),
    )


class CNN(nn.Module):
    """conv 1->20 5x5, ReLU, max-pool 2, conv 20->50 5x5, ReLU, max-pool 2, FC 800->500, ReLU, FC 500->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def steps(self) -> list[tuple[str, Any]]:
        return [
            ("conv1", self.conv1), ("relu1", F.relu), ("pool1", lambda x: F.max_pool2d(x, 2)),
            ("conv2", self.conv2), ("relu2", F.relu), ("pool2", lambda x: F.max_pool2d(x, 2)),
            ("flatten", lambda x: x.view(-1, 800)), ("fc1", self.fc1), ("relu3", F.relu), ("fc2", self.fc2),
        ]  # fmt: skip

    def forward(self, x: torch.Tensor, clock: dict[str, float] | None = None) -> torch.Tensor:
        for name, step in self.steps():
            start = time.perf_counter()
            x = step(x)
            if clock is not None:
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
        return x


class SeedNet(nn.Module):
    """The seed tutorial's CNN (:class:`lightning_fed.models.SeedCNN`): conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU,
    max-pool 2, FC 9216->128, ReLU, FC 128->10 (its log-softmax keeps the argmax, so inference stops before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.fc2 = nn.Linear(128, 10)

    def steps(self) -> list[tuple[str, Any]]:
        return [
            ("conv1", self.conv1), ("relu1", F.relu), ("conv2", self.conv2), ("relu2", F.relu),
            ("pool", lambda x: F.max_pool2d(x, 2)), ("flatten", lambda x: x.reshape(-1, 64 * 12 * 12)),
            ("fc1", self.fc1), ("relu3", F.relu), ("fc2", self.fc2),
        ]  # fmt: skip

    forward = CNN.forward


CNNS = {"seed": SeedNet, "pysyft": CNN}


class Net(nn.Module):
    """PySyft's Part 12 bis network: 784-128-64-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 784)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class PhaseClock:
    """Seconds spent in each phase of the protocols: the dealer (drawing and dealing correlated randomness), the
    workers' local steps, opening masked values, sharing (inputs and zero sharings); the rest is orchestration."""

    _PHASES = (
        (provider, ("beaver_triple", "binary_triple", "bit_pair", "truncation_pair"), "dealer"),
        (Parties, ("map",), "workers' local steps"),
        (Parties, ("open", "open_xor"), "opening masked values"),
        (Parties, ("share",), "fresh sharings"),
    )

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> PhaseClock:
        for owner, names, label in self._PHASES:
            for name in names:
                original = getattr(owner, name)
                self._saved.append((owner, name, original))
                setattr(owner, name, self._timed(original, label))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _timed(self, fn: Any, label: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        return wrapper


def _workers() -> tuple[Any, Any, Any]:
    return sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice"), sy.VirtualWorker(id="crypto_provider")


def inference(args: argparse.Namespace, data: tuple) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    torch.manual_seed(args.seed)
    model = CNNS[args.cnn]()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for _ in range(args.cnn_epochs):
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    train_s = time.perf_counter() - start
    subset = torch.randperm(len(xte), generator=torch.Generator().manual_seed(args.seed))[: args.infer_images]
    x, y = xte[subset], yte[subset]
    with torch.no_grad():
        plain_pred = model(x).argmax(1)
    bob, alice, cp = _workers()
    enc = {"base": args.base, "precision_fractional": args.precision}
    share_module(fix_precision_module(model, **enc), bob, alice, crypto_provider=cp)
    clock: dict[str, float] = {}
    preds = []
    share_s = 0.0
    start = time.perf_counter()
    with torch.no_grad(), PhaseClock() as phases:
        for i in range(0, len(x), args.infer_batch):
            t0 = time.perf_counter()
            xs = sy.smpc.share(x[i : i + args.infer_batch], bob, alice, crypto_provider=cp, **enc)
            share_s += time.perf_counter() - t0
            out = model(xs, clock)
            t0 = time.perf_counter()
            pred = out.argmax(dim=1)
            clock["argmax"] = clock.get("argmax", 0.0) + time.perf_counter() - t0
            preds.append(pred.get().float_precision().round().long())
    total = time.perf_counter() - start
    shared_pred = torch.cat(preds)
    n = len(x)
    return {
        "cnn": args.cnn,
        "images": n,
        "plain_train_s": train_s,
        "plain_acc": float((plain_pred == y).float().mean()),
        "shared_acc": float((shared_pred == y).float().mean()),
        "disagreements": int((plain_pred != shared_pred).sum()),
        "s_per_image": total / n,
        "share_images_s_per_image": share_s / n,
        "s_per_image_by_layer": {k: v / n for k, v in clock.items()},
        "s_per_image_by_phase": {k: v / n for k, v in phases.seconds.items()},
    }


def training(args: argparse.Namespace, data: tuple) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    xtr, ytr = xtr[: args.train_images], ytr[: args.train_images]
    xte, yte = xte[: args.test_images], yte[: args.test_images]
    torch.manual_seed(args.seed)
    plain = Net()
    shared = Net()
    shared.load_state_dict(plain.state_dict())
    bob, alice, cp = _workers()
    enc = {"base": args.base, "precision_fractional": args.precision}
    shared = share_module(fix_precision_module(shared, **enc), bob, alice, crypto_provider=cp, requires_grad=True)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=args.lr)
    opt = torch.optim.SGD(shared.parameters(), lr=args.lr)
    batch_s: list[float] = []
    share_s = 0.0
    losses: list[float] = []
    for _ in range(args.epochs):
        for i in range(0, len(xtr), args.batch_size):
            x, y = xtr[i : i + args.batch_size], F.one_hot(ytr[i : i + args.batch_size], 10).float()
            opt_plain.zero_grad()
            plain_out = plain(x)
            plain_loss = F.cross_entropy(plain_out, y) if args.loss == "ce" else ((plain_out - y) ** 2).sum() / len(x)
            plain_loss.backward()
            opt_plain.step()
            t0 = time.perf_counter()
            xs = sy.smpc.share(x, bob, alice, crypto_provider=cp, requires_grad=True, **enc)
            ys = sy.smpc.share(y, bob, alice, crypto_provider=cp, **enc)
            t1 = time.perf_counter()
            opt.zero_grad()
            out = shared(xs)
            loss = F.cross_entropy(out, ys) if args.loss == "ce" else ((out - ys) ** 2).sum().refresh() / len(x)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            share_s += t1 - t0
            batch_s.append(t2 - t1)
            if (i // args.batch_size) % args.log_every == 0:
                losses.append(float(loss.get().float_precision()))
    start = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 500):
            xs = sy.smpc.share(xte[i : i + 500], bob, alice, crypto_provider=cp, **enc)
            ys = sy.smpc.share(yte[i : i + 500].float(), bob, alice, crypto_provider=cp, **enc)
            pred = shared(xs).argmax(dim=1)
            correct = pred.eq(ys.view_as(pred)).sum() + correct
        n_correct = float(correct.get().float_precision())
        test_s = time.perf_counter() - start
        plain_acc = float((plain(xte).argmax(1) == yte).float().mean())
    batches = torch.tensor(batch_s)
    return {
        "train_images": len(xtr),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "loss": args.loss,
        "batches": len(batch_s),
        "s_per_batch_median": float(batches.median()),
        "s_per_batch_mean": float(batches.mean()),
        "s_per_batch_p95": float(batches.quantile(0.95)),
        "s_per_batch_max": float(batches.max()),
        "share_batch_s_mean": share_s / len(batch_s),
        "shared_test_acc": n_correct / len(xte),
        "plain_test_acc": plain_acc,
        "test_images": len(xte),
        "test_s": test_s,
        "loss_log": losses,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "infer", "train"), default="all")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data: checks that the script runs")
    parser.add_argument("--base", type=int, default=2)
    parser.add_argument("--precision", type=int, default=16, help="precision_fractional (digits in --base)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cnn",
        choices=sorted(CNNS),
        default="seed",
        help="seed: the seed tutorial's CNN (32/64 3x3, FC 128); pysyft: PySyft's 20/50 5x5, FC 500",
    )
    parser.add_argument("--cnn-epochs", type=int, default=1)
    parser.add_argument("--infer-images", type=int, default=1000)
    parser.add_argument("--infer-batch", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=60000)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--loss", choices=("mse", "ce"), default="mse", help="ce: CrypTen-approximated cross-entropy")
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)
    if args.smoke:
        args.infer_images, args.infer_batch, args.train_images, args.test_images = 16, 8, 128, 64
    torch.set_num_threads(args.threads)
    info = machine_info()
    print_machine(info)
    data = load_mnist(args.smoke)
    record: dict[str, Any] = {"benchmark": "smpc", "machine": info, "config": vars(args)}
    if args.part in ("all", "infer"):
        record["inference"] = res = inference(args, data)
        print(
            f"inference: {res['images']} images, plain acc {res['plain_acc']:.4f}, shared acc {res['shared_acc']:.4f} "
            f"({res['disagreements']} disagreements), {res['s_per_image'] * 1e3:.1f} ms/image"
        )
        for name, sec in res["s_per_image_by_layer"].items():
            print(f"  {name:8s} {sec * 1e3:8.2f} ms/image")
        for name, sec in res["s_per_image_by_phase"].items():
            print(f"  {name:24s} {sec * 1e3:8.2f} ms/image")
    if args.part in ("all", "train"):
        record["training"] = res = training(args, data)
        print(
            f"training: {res['batches']} batches of {res['batch_size']}, {res['s_per_batch_median']:.3f} s/batch "
            f"(median; p95 {res['s_per_batch_p95']:.3f}, max {res['s_per_batch_max']:.3f}), "
            f"shared test acc {res['shared_test_acc']:.4f}, plain {res['plain_test_acc']:.4f}"
        )
    print_json_line(record)
    return record


if __name__ == "__main__":
    main()
