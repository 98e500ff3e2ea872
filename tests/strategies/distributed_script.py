"""FederatedStrategy fits for ``tests/strategies/test_distributed.py``, in one process or over several.

Run as a script (``python distributed_script.py --devices 2 ...`` for Lightning's subprocess launcher, or under
``torchrun``), it runs the fits named by ``--runs`` one after another (a fresh model, datamodule and strategy each,
seeded alike) and process 0 saves what the test compares to ``--out``. The test imports :func:`fit` to run the same
fits in its own process with ``devices=1``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

import lightning_fed as sy  # noqa: E402
from lightning_fed import FederatedStrategy  # noqa: E402
from lightning_fed.exceptions import PointerError  # noqa: E402
from lightning_fed.privacy.dp import DPConfig  # noqa: E402
from lightning_fed.secure_aggregation import SecureAggregationConfig  # noqa: E402
from lightning_fed.testing import BoringClassifier  # noqa: E402
from tests.strategies.helpers import FedDM, tiny_dataset  # noqa: E402

SEED = 11
NUM_WORKERS = 5


def strategy_for(kind: str, **extra: Any) -> FederatedStrategy:
    """The configurations the tests run; all sample clients."""
    common: dict[str, Any] = {"clients_per_round": 2, "seed": 3, **extra}
    if kind in ("fedavg", "rank_seeded"):
        return FederatedStrategy(**common)
    if kind == "momentum":  # per-worker optimizer state kept across rounds, and a server optimizer
        return FederatedStrategy(aggregation="fedavgm", **common)
    if kind == "secure":  # pairwise masks between workers of different processes must cancel
        config = SecureAggregationConfig(seed=5, rounding="nearest")
        return FederatedStrategy(secure_aggregation=config, **{**common, "clients_per_round": 3})
    if kind == "dp":  # the server's noise must be added once
        privacy = DPConfig(
            noise_multiplier=0.5, clip_norm=0.5, seed=9, adaptive_clipping=True, clipped_count_stddev=1.0
        )
        return FederatedStrategy(privacy=privacy, **{**common, "clients_per_round": 3})
    if kind == "scaffold":
        return FederatedStrategy(aggregation="scaffold", **common)
    if kind == "failures":  # dropouts and stragglers in both processes: who survived must be the same everywhere
        return FederatedStrategy(
            dropout_rate=0.3, deadline_steps=3, straggler_policy="partial", **{**common, "clients_per_round": 3}
        )
    if kind == "median":  # not a sum: every process's updates are gathered
        return FederatedStrategy(aggregation="fedmedian", **{**common, "clients_per_round": 3})
    raise ValueError(kind)


class PointerProbe(Callback):
    """At the start of each round, tries a pointer to every worker and records which ones refuse, and why."""

    def __init__(self) -> None:
        self.refusals: dict[str, str] = {}
        self.reached: list[str] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for worker in trainer.strategy.workers:
            try:
                sy.send(torch.ones(1), worker).get()
                self.reached.append(worker.id)
            except PointerError as err:
                self.refusals[worker.id] = str(err)


def fit(
    kind: str = "fedavg",
    *,
    rounds: int = 3,
    devices: int = 1,
    dropout: float = 0.0,
    ckpt_dir: str | None = None,
    ckpt_path: str | None = None,
    prefix: str = "w",
    probe: bool = False,
    seed: int = SEED,
    workers: int = NUM_WORKERS,
    **strategy_args: Any,
) -> dict[str, Any]:
    """One fit; returns the global model, the round count, the per-worker summary, metrics and each round's
    per-process step counts."""
    if kind == "rank_seeded":  # each process its own seed: the model must still start from process 0's
        seed += int(os.environ.get("LOCAL_RANK", "0"))
    pl.seed_everything(seed, verbose=False)
    model = BoringClassifier(4, 3, hidden=6, lr=0.1, optimizer="momentum", dropout=dropout)
    data = FedDM(tiny_dataset(64), num_workers=workers, batch_size=4, seed=7, prefix=prefix, partition="quantity_skew")
    strategy = strategy_for(kind, **strategy_args)
    callbacks: list[Callback] = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}"))
    if probe:
        callbacks.append(PointerProbe())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=rounds,
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    planner = getattr(
        strategy.backend, "planner", None
    )  # None in the main process of a spawn launch: the processes planned
    plans = []
    for r in range(rounds if planner is not None else 0):
        plan = planner.plan(r)
        local = getattr(plan, "local_steps", None)
        plans.append({"workers": [w.id for w in plan.workers], "local": local, "total": plan.total_steps})
    out = {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "round_index": strategy.round_index,
        "summary": strategy.worker_summary(),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "plans": plans,
        "world_size": trainer.world_size,
        "owners": dict(getattr(planner, "owners", {})),
        "global_step": trainer.global_step,
    }
    if probe:
        found = next(c for c in callbacks if isinstance(c, PointerProbe))
        out["probe"] = {"refusals": found.refusals, "reached": sorted(set(found.reached))}
    return out


USED_GROUP = False  # set once the fits are done: whether this process joined a process group


def report_process_group_at_exit() -> None:
    """Registered before any fit, so it runs after the strategy's own exit handler (atexit runs them last in, first
    out): says whether a process group was still alive for the interpreter's finalization to tear down."""
    state = "left" if torch.distributed.is_initialized() else "destroyed" if USED_GROUP else "none"
    print(f"process group at exit: {state}", flush=True)


def main() -> None:
    global USED_GROUP
    atexit.register(report_process_group_at_exit)
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--runs", default="fedavg", help="comma-separated: a kind, or 'resume' (three fits)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", default=None)
    parser.add_argument("--start-method", default="popen")
    parser.add_argument("--workers", type=int, default=NUM_WORKERS)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for run in args.runs.split(","):
        if run == "resume":  # uninterrupted; stopped after 2 rounds with a checkpoint a round; resumed from round 2
            assert args.ckpt_dir is not None
            results["resume/full"] = fit("momentum", rounds=4, devices=args.devices, dropout=0.2, probe=True)
            results["resume/stopped"] = fit(
                "momentum", rounds=2, devices=args.devices, dropout=0.2, ckpt_dir=args.ckpt_dir
            )
            results["resume/resumed"] = fit(
                "momentum",
                rounds=4,
                devices=args.devices,
                dropout=0.2,
                ckpt_path=str(Path(args.ckpt_dir) / "epoch=1.ckpt"),
                seed=999,  # the checkpoint, not this seed, must decide what happens next
            )
        else:
            results[run] = fit(
                run, rounds=args.rounds, devices=args.devices, workers=args.workers, start_method=args.start_method
            )
    USED_GROUP = torch.distributed.is_initialized()
    if int(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0) == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    main()
