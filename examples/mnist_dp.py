"""Two schools train MNIST with sample-level differential privacy (DP-SGD at each school, Opacus' accountant).

Each school runs DP-SGD on its own 30,000 images: Poisson-sampled batches (rate 0.004, about 120 images), each
image's gradient clipped to ``--clip``, Gaussian noise of std ``--sigma * --clip`` added to the sum; FedAvg averages
the two private models once a round. Every school's epsilon (at delta 1e-5) is logged each round. The presets are
the three settings of Opacus' MNIST example (same network, sample rate, noise, clip, learning rate and epochs), so
each school's epsilon equals the one Opacus reports for them:

    python examples/mnist_dp.py --data-root data --preset eps1.2   # Opacus: 15 epochs, 94.63% +- 0.34
    python examples/mnist_dp.py --data-root data --preset eps3     # Opacus: 60 epochs, 96.78% +- 0.21
    python examples/mnist_dp.py --data-root data --preset eps7     # Opacus: 45 epochs, 97.09% +- 0.17

``--no-dp`` trains the same workload without privacy (for the time ratio, see ``benchmarks/privacy.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import lightning.pytorch as pl

from lightning_fed import FederatedStrategy
from lightning_fed.cli import (
    HelpFormatter,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    probability,
    seed_int,
    writable_folder,
)
from lightning_fed.datasets import FederatedMNISTDataModule
from lightning_fed.models import MNISTClassifier
from lightning_fed.privacy.dp import DPConfig, find_dp

# Opacus' MNIST example settings (examples/mnist_README.md): epochs, learning rate, noise multiplier, clip norm
PRESETS: dict[str, dict[str, float]] = {
    "eps1.2": {"epochs": 15, "lr": 0.25, "sigma": 1.3, "clip": 1.5, "opacus_acc": 94.63, "opacus_eps": 1.19},
    "eps3": {"epochs": 60, "lr": 0.15, "sigma": 1.1, "clip": 1.0, "opacus_acc": 96.78, "opacus_eps": 3.01},
    "eps7": {"epochs": 45, "lr": 0.25, "sigma": 0.7, "clip": 1.5, "opacus_acc": 97.09, "opacus_eps": 7.10},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (downloaded there if missing)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="eps1.2", help="one of Opacus' three settings")
    parser.add_argument("--epochs", type=positive_int, default=None, help="rounds (default: the preset's epochs)")
    parser.add_argument("--sigma", type=non_negative_float, default=None,
                        help="noise multiplier (default: calibrated to spend the preset's epsilon)")  # fmt: skip
    parser.add_argument("--opacus-sigma", action="store_true",
                        help="use Opacus' noise multiplier of the preset instead of calibrating it")  # fmt: skip
    parser.add_argument("--clip", type=positive_float, default=None,
                        help="per-sample clip norm (default: the preset's)")  # fmt: skip
    parser.add_argument("--lr", type=positive_float, default=None, help="SGD learning rate (default: the preset's)")
    parser.add_argument("--batch-size", type=positive_int, default=120,
                        help="each school's expected batch: 0.004 x 30,000 images, Opacus' sample rate")  # fmt: skip
    parser.add_argument("--delta", type=probability, default=1e-5, help="the delta of each school's (epsilon, delta)")
    parser.add_argument("--no-dp", action="store_true", help="train without privacy (same batches, no clipping/noise)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the split, the model, the batches and noise")
    parser.add_argument("--limit-train-batches", type=fraction, default=1.0, help="fraction of each round (smoke runs)")
    parser.add_argument("--limit-test-batches", type=fraction, default=1.0, help="fraction of the test set")
    parser.add_argument("--log-dir", type=writable_folder, default="lightning_logs", help="where Lightning logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    epochs = args.epochs if args.epochs is not None else int(preset["epochs"])
    sigma = args.sigma if args.sigma is not None else preset["sigma"] if args.opacus_sigma else None
    clip = args.clip if args.clip is not None else preset["clip"]
    lr = args.lr if args.lr is not None else preset["lr"]
    pl.seed_everything(args.seed, workers=True)
    data = FederatedMNISTDataModule(root=args.data_root, batch_size=args.batch_size, seed=args.seed)
    model = MNISTClassifier(architecture="dp_cnn", lr=lr)
    target = None if sigma is not None else preset["opacus_eps"]  # calibrate the noise to spend Opacus' epsilon
    privacy = None if args.no_dp else DPConfig(
        level="sample", noise_multiplier=sigma, max_grad_norm=clip, delta=args.delta, seed=args.seed,
        target_epsilon=target, num_rounds=epochs if target is not None else None,
    )  # fmt: skip
    strategy = FederatedStrategy(seed=args.seed, privacy=privacy)
    trainer = pl.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=args.limit_train_batches,
        limit_test_batches=args.limit_test_batches,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=args.log_dir,
        enable_progress_bar=False,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    accuracy = 100 * float(trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"])
    result: dict[str, float] = {"test_acc": accuracy, "fit_seconds": fit_seconds, "epochs": epochs}
    if privacy is not None:
        dp = find_dp(strategy.aggregator)
        epsilons = dp.epsilons()
        result["epsilon"] = max(epsilons.values())
        result["noise_multiplier"] = max(dp.noise_multipliers.values())
        print(f"\nPer school epsilon at delta={args.delta:g}: {({k: round(v, 3) for k, v in epsilons.items()})}; "
              f"noise multipliers {({k: round(v, 4) for k, v in dp.noise_multipliers.items()})}")  # fmt: skip
    print(f"Test accuracy after {epochs} rounds ({'no DP' if privacy is None else f'clip={clip}, lr={lr}'}): "
          f"{accuracy:.2f}%  (Opacus' single-site figure: {preset['opacus_acc']}% at epsilon "
          f"{preset['opacus_eps']}); fit {fit_seconds:.0f} s")  # fmt: skip
    print(json.dumps({"preset": args.preset, "dp": privacy is not None, **result}))
    return result


if __name__ == "__main__":
    main()
