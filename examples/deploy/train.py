"""The server's side of a deployed federation: the same LightningModule and Trainer as in simulation, with the
schools reached over mutual TLS (their workers run ``lightning-fed worker``; see run_local.sh and docs/deployment.md).

    python examples/deploy/train.py --certs certs --site alice=127.0.0.1:50051 --site bob=127.0.0.1:50052 \
        --mnist-test data/MNIST/raw --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time

import lightning.pytorch as pl

from lightning_fed import FederatedStrategy
from lightning_fed.data.sites import SiteDataModule
from lightning_fed.models import MNISTClassifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certs", required=True, help="the server's certificate folder (ca.pem, server.pem/key)")
    parser.add_argument("--site", action="append", required=True, metavar="ID=HOST:PORT", help="a school; repeatable")
    parser.add_argument("--mnist-test", required=True, help="the server's own (public) MNIST test set folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.5)
    args = parser.parse_args(argv)
    data = SiteDataModule(args.site, "mnist-train", batch_size=args.batch_size, shuffle=True, seed=0, certs=args.certs,
                          test_mnist=args.mnist_test)  # fmt: skip
    sites = data.sites
    pl.seed_everything(0)
    model = MNISTClassifier(lr=args.lr, momentum=args.momentum)
    trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=args.rounds, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]
    traffic = {s.id: s.traffic.get("TrainRequest", [0, 0, 0]) for s in sites}
    for site_id, (messages, sent, received) in traffic.items():
        print(f"{site_id}: {messages} rounds, {sent / 2**20:.1f} MiB sent to it, {received / 2**20:.1f} MiB back")
    print(f"test accuracy after {args.rounds} rounds: {100 * accuracy:.2f}% ({time.perf_counter() - start:.0f} s)")
    for site in sites:
        site.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
