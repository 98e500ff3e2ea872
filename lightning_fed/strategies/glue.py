"""Where FederatedStrategy meets Lightning's public surface: the calls its backends make, the loggers and progress
bar, Trainer limits, the privacy monitor, and the federated entry of a checkpoint.

Example:
    >>> CHECKPOINT_KEY
    'federated'
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_warn

from lightning_fed._compat.lightning import lift_max_steps, replays_batch_on_resume, trainer_of
from lightning_fed.aggregation import Aggregator
from lightning_fed.backends.base import Backend, LightningCalls, LocalWork, device_mover, overrides_transfer
from lightning_fed.backends.fused import FusedBackend, fusion_blockers
from lightning_fed.backends.round_loader import RoundLoader
from lightning_fed.backends.sequential import SequentialBackend, warn_limits
from lightning_fed.backends.threaded import ThreadedBackend, thread_blockers
from lightning_fed.backends.vectorized import VectorizedBackend
from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import CheckpointMismatchError, FederatedConfigError
from lightning_fed.logs import info
from lightning_fed.privacy.dp import PrivacyMonitor, find_dp
from lightning_fed.rounds.stats import capture_rng, restore_rng
from lightning_fed.strategies.checkpoint import (
    check_fingerprint,
    digest,
    fingerprint,
    open_worker_states,
    placed_on,
    seal_worker_states,
)
from lightning_fed.workers.base import BaseWorker

if TYPE_CHECKING:
    from lightning_fed.strategies.federated import FederatedStrategy

CHECKPOINT_KEY = "federated"


def lightning_calls(strategy: FederatedStrategy) -> LightningCalls:
    """What a backend calls in Lightning: the base Strategy's step methods, bound to ``strategy``."""

    def log(metrics: dict[str, float]) -> None:
        trainer = trainer_of(strategy.lightning_module)
        if not metrics or trainer is None:
            return
        rows = {**metrics, "epoch": trainer.current_epoch}  # the round, as Lightning adds to what self.log logs
        for logger in trainer.loggers:
            logger.log_metrics(rows, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    def progress(unit: str, worker: BaseWorker) -> None:
        trainer = trainer_of(strategy.lightning_module)
        bar = getattr(getattr(trainer, "progress_bar_callback", None), "train_progress_bar", None)
        set_description = getattr(bar, "set_description", None)
        if callable(set_description):
            set_description(f"{unit} {trainer.current_epoch} · {worker.id}", refresh=False)

    return LightningCalls(
        training_step=lambda *a, **k: Strategy.training_step(strategy, *a, **k),
        optimizer_step=lambda optimizer, closure, model, **k: Strategy.optimizer_step(
            strategy, optimizer, closure, model, **k
        ),
        backward=lambda loss, optimizer, *a, **k: Strategy.backward(strategy, loss, optimizer, *a, **k),
        trainer=lambda: trainer_of(strategy.lightning_module),
        module=lambda: strategy.lightning_module,
        optimizers=lambda: strategy.optimizers,
        skipped_output=strategy.skipped_step_output,
        log=log,
        precision=lambda: strategy.precision_plugin,
        restore=strategy.apply_restored_state,
        progress=progress,
        batch_mover=lambda: batch_mover(strategy),
    )


def moved_by_lightning(batch: Any) -> bool:
    """Whether Lightning's transfer (the hooks, then the device) applies to a training batch: not to a backend's
    :class:`~lightning_fed.backends.base.LocalWork`, which holds no tensors (the backend moves each real batch at the
    worker, :func:`batch_mover`)."""
    return not isinstance(batch, LocalWork)


def batch_mover(strategy: FederatedStrategy) -> Callable[[list[Any]], list[Any]]:
    """How a backend moves the real batches its workers gathered (:class:`~lightning_fed.backends.base.LocalWork`), as
    Lightning's loop moves a batch: the precision plugin's ``convert_input`` first (``"64-true"``, ``"bf16-true"``),
    then one by one through Lightning's transfer (the module's and datamodule's hooks, then the device) where a hook
    is overridden; else straight to the module's device, and not at all on the CPU."""
    module = strategy.lightning_module
    trainer = trainer_of(module)
    datamodule = getattr(trainer, "datamodule", None)
    hooks, precision = overrides_transfer(module, datamodule), strategy.precision_plugin
    move = device_mover(strategy.root_device)
    convert = type(precision).convert_input is not Precision.convert_input  # 32-bit and mixed: inputs as they are
    if not hooks and not convert:
        return move

    def moved(batches: list[Any]) -> list[Any]:
        batches = [precision.convert_input(batch) for batch in batches] if convert else batches
        return [Strategy.batch_to_device(strategy, batch) for batch in batches] if hooks else move(batches)

    return moved


def provisional_loader(backend: Backend, loader: FederatedDataLoader) -> Any:
    """The train loader Lightning gets before the strategy's ``setup`` has made the fit's backend (it sets its train
    data up inside that ``setup`` when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``): each
    round planned as one Lightning step per local batch (what a run with a step-interval scheduler trains), with
    nothing set up. The strategy's ``setup`` then has Lightning set the data up again through the fit's backend."""
    if not isinstance(backend, SequentialBackend):
        return loader  # follow mode: a batch is a step
    backend.loader, backend.planner = loader, backend.make_planner(loader)
    return RoundLoader(backend)


def remote_backend(strategy: FederatedStrategy, backend: Backend) -> Backend:
    """The backend for a :class:`~lightning_fed.data.sites.SiteLoader`: rounds at remote sites, one request each."""
    from lightning_fed.backends.remote import RemoteBackend  # imports the transport (gRPC) only when deployed

    threads = strategy.parallel_workers
    if strategy.mode != "fedavg" or strategy.vectorize is True or strategy.is_distributed or threads > 1:
        raise FederatedConfigError(
            f"remote sites train FedAvg rounds in one process: got mode={strategy.mode!r}, "
            f"vectorize={strategy.vectorize}, parallel_workers={threads}, {strategy.world_size} processes. Use "
            "mode='fedavg', vectorize=False, parallel_workers=1 (each site trains at home) and devices=1 with a "
            "SiteDataModule."
        )
    assert isinstance(backend, SequentialBackend)
    return backend.rebuilt_as(RemoteBackend)


def choose_local_loop(local_loop: str, backend: Backend, trainer: pl.Trainer, parallel_workers: int = 1) -> Backend:
    """The sequential backend with fused local loops where ``local_loop`` asks for them and the run allows
    (:mod:`lightning_fed.backends.fused`), ``parallel_workers`` of them at once in threads
    (:mod:`lightning_fed.backends.threaded`); ``"fused"`` or threads where the run does not allow them: an error naming
    what stands in the way."""
    vectorized = isinstance(backend, VectorizedBackend)
    if local_loop == "steps" or (type(backend) is not SequentialBackend and not vectorized):  # steps: 1 worker at once
        return backend
    assert isinstance(backend, SequentialBackend)
    blockers = fusion_blockers(trainer, trainer.lightning_module, backend)
    if parallel_workers > 1:
        return threaded_backend(backend, trainer, parallel_workers, blockers)
    if blockers:
        if local_loop == "fused":
            raise FederatedConfigError(
                f"`local_loop='fused'` runs each worker's local batches as one Lightning step, but this run needs a "
                f"Lightning step per batch for: {', '.join(blockers)}. Pass local_loop='steps' (or 'auto'), or "
                "remove those."
            )
        info(f"FederatedStrategy: one Lightning step per local batch (local_loop='steps'), for {', '.join(blockers)}.")
        return backend
    if isinstance(backend, VectorizedBackend):
        backend.fused = True  # chunks of vectorized steps
        return backend
    return backend.rebuilt_as(FusedBackend)


def threaded_backend(backend: SequentialBackend, trainer: pl.Trainer, count: int, blockers: list[str]) -> Backend:
    """``count`` workers at once in threads, set up; an error naming what stands in the way (also what stops fused
    local loops, which each thread runs)."""
    blockers = blockers + thread_blockers(trainer, trainer.lightning_module, backend.rounds.aggregator,
                                          backend.calls.precision())  # fmt: skip
    if blockers:
        raise FederatedConfigError(
            f"`parallel_workers={count}` trains {count} workers at once, each running its local batches in one tight "
            f"loop in its own thread, but this run needs: {'; '.join(blockers)}. Pass parallel_workers=1, or remove "
            "those."
        )
    threaded = backend.rebuilt_as(ThreadedBackend)
    assert isinstance(threaded, ThreadedBackend)
    threaded.parallel_workers = count
    threaded.setup(trainer)
    return threaded


def apply_limits(trainer: pl.Trainer, backend: Backend) -> None:
    """``limit_train_batches`` (and ``fast_dev_run``) as a share of every worker's local work, with one warning."""
    if not isinstance(backend, SequentialBackend):
        return
    limit = trainer.limit_train_batches
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return
    backend.planning["limit"] = limit
    trainer.limit_train_batches = 1.0  # the round loader's length already is the limited round
    if trainer.fast_dev_run:  # its max_steps (the same N) would cut the round's tail: the one round is the limit
        lift_max_steps(trainer)
    warn_limits(limit)


class RoundEnd(Callback):
    """Closes a round cut short by a stop (``max_steps``, ``should_stop``) at the end of Lightning's training epoch,
    first of the epoch-end hooks: the module's ``on_train_epoch_end``, the callbacks and ``last.ckpt`` all see the
    model the fit ends with, not a worker's local model or the round's start."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backend = getattr(trainer.strategy, "backend", None)
        if backend is not None:
            backend.end_epoch()


def add_callbacks(trainer: pl.Trainer, aggregator: Aggregator, saved_callbacks: dict[str, Any]) -> None:
    """The strategy's callbacks: :class:`RoundEnd`, first; with differential privacy, a :class:`PrivacyMonitor` (logs
    ``dp/epsilon``, stops at the target), its history restored from the checkpoint being resumed (Lightning restored
    the callbacks before it was added)."""
    if not any(isinstance(c, RoundEnd) for c in trainer.callbacks):
        trainer.callbacks.insert(0, RoundEnd())
    if find_dp(aggregator) is None or any(isinstance(c, PrivacyMonitor) for c in trainer.callbacks):
        return
    monitor = PrivacyMonitor()
    saved = saved_callbacks.get(monitor.state_key)
    if saved is not None:
        monitor.load_state_dict(saved)
    trainer.callbacks.append(monitor)


def federated_state(strategy: FederatedStrategy) -> dict[str, Any]:
    """The strategy's entry in a checkpoint: the rounds' state, the mode and the RNG (tensors and numbers only).

    Each worker's own state (optimizer, schedule, SCAFFOLD's ``c_i``, its local model mid-round) is sealed for it
    under ``worker_states``; ``fingerprint`` names the federation (:mod:`lightning_fed.strategies.checkpoint`).

    A checkpoint saved in the middle of a round holds the global model of the round's start as the module's
    ``state_dict`` and the open round under ``partial_round``: the steps done, the aggregator's partial sums, the
    failures so far, the training worker (its local model is in its sealed state). Resuming continues that round
    exactly. Where that state is
    not values (secure aggregation's key agreement), or the backend keeps more (vectorized cohorts, processes), or
    Lightning re-runs the batch (< 2.5), the round is only marked, and resuming from it is refused.
    """
    rounds, backend = strategy.rounds, strategy.backend
    fp = fingerprint(rounds.stats.rows, strategy.mode, rounds.aggregator)
    local = backend.local_model() if isinstance(backend, SequentialBackend) else None
    state = {
        **rounds.state_dict(), "mode": strategy.mode, "rng": capture_rng(), "fingerprint": fp,
        "worker_states": seal_worker_states(rounds.worker_states(strategy.optimizers, local), digest(fp)),
    }  # fmt: skip
    trainer = trainer_of(strategy.lightning_module)
    mid_round = rounds.is_open and not rounds.is_complete(trainer.num_training_batches)
    if rounds.plan is None or not (mid_round or replays_batch_on_resume(trainer)):
        return state
    open_round = backend.open_round_state() if mid_round and isinstance(backend, SequentialBackend) else None
    if open_round is not None and not replays_batch_on_resume(trainer):
        state["partial_round"] = {**open_round, "resumable": True}
        return state
    state["partial_round"] = {"round": rounds.plan.round_index, "steps": rounds.steps_done,
                              "total": rounds.total_steps, "resumable": False}  # fmt: skip
    rank_zero_warn(
        f"Saving a checkpoint in the middle of federated round {rounds.plan.round_index} (step {rounds.steps_done} "
        f"of {rounds.total_steps}) with {type(backend).__name__} and {rounds.aggregator!r}: it holds the global model "
        "of the round's start, for testing or predicting; training cannot resume from it exactly (resume from a "
        "round's end, e.g. ModelCheckpoint(every_n_epochs=1) or save_last at an epoch's end)."
    )
    return state


def read_checkpoint(load: Callable[..., dict[str, Any]], path: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``load(path, **kwargs)``, with an error that names the file and the fix when it is not a readable checkpoint."""
    try:
        return load(path, **kwargs)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise FederatedConfigError(
            f"`ckpt_path={str(path)!r}` cannot be read as a checkpoint ({type(err).__name__}: {err}): the file is "
            "truncated (a save that was interrupted) or not a checkpoint. Resume from another one, such as the "
            "previous round's, or start without ckpt_path."
        ) from err


def resume_open_round(backend: Backend, state: dict[str, Any] | None) -> None:
    """Hand a checkpoint's open round to the backend, which continues it at its next batch."""
    partial = (state or {}).get("partial_round")
    if partial and partial.get("resumable") and isinstance(backend, SequentialBackend):
        backend.resume_state = partial


def check_resumable(state: dict[str, Any] | None) -> None:
    """Refuse to resume training from a checkpoint whose open round cannot be continued (see
    :func:`federated_state`)."""
    partial = (state or {}).get("partial_round")
    if partial and not partial.get("resumable"):
        raise FederatedConfigError(
            f"This checkpoint was saved in the middle of federated round {partial['round']} (step {partial['steps']} "
            f"of {partial['total']}); resuming training from it would not continue that round exactly, so it is "
            "refused. Resume from a checkpoint saved at a round's end (ModelCheckpoint(every_n_epochs=1), or "
            "save_last at an epoch's end), or load it only to test or predict: trainer.test(ckpt_path=...)."
        )


def load_federated_state(strategy: FederatedStrategy, state: dict[str, Any]) -> None:
    """Check that a checkpoint belongs to this federation, then load the server's part and let each worker open
    its own sealed state (the active worker's local model goes to the open round the backend continues)."""
    state = strategy.select_state(state)  # over several processes: this process's RNG and aggregator state
    rounds = strategy.rounds
    fp = fingerprint(rounds.stats.rows, strategy.mode, rounds.aggregator)
    check_fingerprint(state.get("fingerprint"), fp)
    rounds.load_state_dict(state)
    opened = placed_on(open_worker_states(state.get("worker_states", {}), digest(fp)), strategy.root_device)
    for worker_id, worker_state in opened.items():
        rounds.load_worker_state(worker_id, worker_state, strategy.optimizers)
    resume = getattr(strategy.backend, "resume_state", None)
    if resume is not None and resume.get("active") is not None:
        resume["local"] = opened.get(resume["active"], {}).get("local")
    if state.get("rng"):
        restore_rng(state["rng"])


def restored_state(checkpoint: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's federated state, its tensors placed for a module on ``device`` (:func:`placed_on`)."""
    state = checkpoint.get(CHECKPOINT_KEY)
    return None if state is None else placed_on(state, device)


def checked_for_fit(checkpoint: dict[str, Any], path: Any, accept_plain: bool) -> dict[str, Any]:
    """A checkpoint given to ``fit``: a plain Lightning one is refused or kept as weights only
    (:func:`plain_checkpoint`); one from the middle of a round that cannot be continued is refused
    (:func:`check_resumable`)."""
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None:
        return plain_checkpoint(checkpoint, path, accept_plain)
    check_resumable(state)
    return checkpoint


def plain_checkpoint(checkpoint: dict[str, Any], path: Any, accept: bool) -> dict[str, Any]:
    """A checkpoint without federated state, given to ``fit``: refused, or (``accept``) kept as the model to start
    from: its weights only; Lightning's loops, optimizers and schedulers start afresh, as the rounds do."""
    if not accept:
        raise CheckpointMismatchError(
            f"`ckpt_path={str(path)!r}` is a plain Lightning checkpoint (it has no federated state: no rounds, no "
            "federation fingerprint): resuming a federated run from it would start rounds and every worker's state "
            "afresh while Lightning's counters go on. Pass FederatedStrategy(accept_plain_checkpoint=True) to start "
            "from its weights, or resume from a checkpoint this federation wrote."
        )
    rank_zero_warn(
        f"`ckpt_path={str(path)!r}` is a plain Lightning checkpoint: federated training starts from its weights "
        "(accept_plain_checkpoint=True); rounds, epochs, optimizers and schedulers start afresh."
    )
    keep = ("state_dict", "pytorch-lightning_version", "hyper_parameters", "hparams_name")
    return {**{k: checkpoint[k] for k in keep if k in checkpoint}, "optimizer_states": [], "lr_schedulers": []}
