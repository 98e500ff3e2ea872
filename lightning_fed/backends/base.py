"""What an execution backend is: how a federation's workers run their steps inside Lightning's fit loop.

The strategy (:class:`~lightning_fed.strategies.FederatedStrategy`) is a thin shell: each of its Lightning hooks hands
off to its backend. A backend gets the train loader (:meth:`Backend.process_dataloader`), sees each training batch
first (:meth:`Backend.batch_start`, from the strategy's ``batch_to_device``, before any callback), and runs the
training step, backward and optimizer step of the worker that owns it. What it calls back in Lightning (the
LightningModule's ``training_step`` under the precision plugin, Lightning's optimizer step, the loggers) comes in
as :class:`LightningCalls`: backends never reach into the Trainer's internals.

Backends: :class:`~lightning_fed.backends.follow.FollowBackend` (the seed's way: one model follows the batches),
:class:`~lightning_fed.backends.sequential.SequentialBackend` (FedAvg rounds, one worker after another, the default),
:class:`~lightning_fed.backends.threaded.ThreadedBackend` (``parallel_workers`` of them at once, one thread each),
:class:`~lightning_fed.backends.vectorized.VectorizedBackend` (a round's workers under ``torch.vmap``) and
:class:`~lightning_fed.backends.distributed.DistributedBackend` (workers spread over processes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.optim import Optimizer

from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import FederatedConfigError, PointerError
from lightning_fed.pointers.pointer_tensor import refs_of
from lightning_fed.rounds.lifecycle import Rounds
from lightning_fed.rounds.releases import audit, releases_scalars
from lightning_fed.rounds.stats import batch_size_of
from lightning_fed.workers.base import BaseWorker
from lightning_fed.workers.session import WorkerSession


@dataclass
class LightningCalls:
    """What a backend calls in Lightning, through the strategy (see the module docstring)."""

    training_step: Callable[..., Any]  # Strategy.training_step: the module's training_step, precision context
    optimizer_step: Callable[..., Any]  # Strategy.optimizer_step: the precision plugin runs the closure and steps
    backward: Callable[..., Tensor]  # Strategy.backward
    trainer: Callable[[], Any]  # the Trainer (or None)
    module: Callable[[], Any]  # the LightningModule
    optimizers: Callable[[], list[Optimizer]]
    skipped_output: Callable[[], Any]  # what training_step returns for a step that trains nothing
    log: Callable[[dict[str, float]], None]  # metrics to the loggers and callback_metrics
    precision: Callable[[], Any]  # the precision plugin
    restore: Callable[[], None]  # apply a checkpoint's federated state now, if one waits
    progress: Callable[[str, BaseWorker], None]  # the progress bar's text: unit and worker
    batch_mover: Callable[[], Callable[[list[Any]], list[Any]]]  # moves real batches to the module's device


class LocalWork:
    """What a backend that gathers its workers' batches itself hands Lightning as a training "batch": a description
    of local work (which worker, which of its batches), with no tensors. The strategy passes it to the backend
    untouched: the transfer hooks and the move to the device run on each real batch, at the worker
    (:meth:`Backend.to_device`)."""

    __slots__ = ()


TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def overrides_transfer(*owners: Any) -> bool:
    """Whether any of ``owners`` (a LightningModule, a LightningDataModule, ``None``) overrides one of Lightning's
    :data:`TRANSFER_HOOKS`: without one, a batch's transfer is a plain move to the device (none on the CPU)."""
    return any(is_overridden(hook, owner) for owner in owners if owner is not None for hook in TRANSFER_HOOKS)


def device_mover(device: torch.device) -> Callable[[Any], Any]:
    """A batch's (or a list of batches') move to ``device`` where no transfer hook is overridden: none on the CPU.

    Example:
        >>> batch = [torch.ones(2)]
        >>> device_mover(torch.device("cpu"))(batch) is batch
        True
    """
    if device.type == "cpu":
        return lambda batch: batch
    return lambda batch: move_data_to_device(batch, device)


def worker_of(batch: Any) -> tuple[Any, BaseWorker]:
    """``(refs, worker)`` of a pointer batch; a clear error for anything else."""
    try:
        return refs_of(batch)
    except PointerError as err:
        raise FederatedConfigError(
            f"FederatedStrategy got a training batch that is not a pointer batch at one worker ({err}). The train "
            "dataloader must yield pointers: wrap your datamodule in lightning_fed.FederatedDataModule(...)."
        ) from err


class Backend:
    """The interface every backend implements (see the module docstring)."""

    name = "backend"

    def __init__(self, calls: LightningCalls, rounds: Rounds) -> None:
        self.calls = calls
        self.rounds = rounds
        self.session: WorkerSession | None = None  # open while a worker runs its step
        self.loader: FederatedDataLoader | None = None  # the federated train loader
        self._mover: Callable[[list[Any]], list[Any]] | None = None

    def to_device(self, batches: list[Any]) -> list[Any]:
        """Real batches a worker gathered itself, as Lightning would hand them to ``training_step``: through the
        module's and datamodule's transfer hooks where they exist, on the module's device."""
        if self._mover is None:  # decided once a backend (a fit's setup rebuilds it)
            self._mover = self.calls.batch_mover()
        return self._mover(batches)

    def gather_batches(
        self, shard: Any, positions: list[Tensor], loader: FederatedDataLoader | None = None
    ) -> list[Any]:
        """The batches at ``positions`` of a worker's ``shard`` (from :meth:`at_shard`, in its session), gathered there
        (:meth:`FederatedDataLoader.gather_batches` of ``loader``, default this backend's) and moved as
        :meth:`to_device` moves them: what a backend that gathers its own batches trains on."""
        loader = loader if loader is not None else self.loader
        assert loader is not None
        return self.to_device(loader.gather_batches(shard, positions))

    @contextmanager
    def at_worker(self, batch: Any, target: tuple[Any, BaseWorker] | None = None) -> Iterator[WorkerSession]:
        """Open the session of the worker that owns ``batch`` (the one way the step runs there); ``target``: its
        ``worker_of(batch)``, when already known."""
        refs, worker = target if target is not None else worker_of(batch)
        session = worker.session(refs, "plan 'training_step'")
        with session:
            self.session = session
            try:
                yield session
            finally:
                self.session = None

    @contextmanager
    def at_shard(self, worker: BaseWorker, loader: FederatedDataLoader | None = None) -> Iterator[Any]:
        """``worker``'s own training dataset (its shard of ``loader``'s, default this backend's, federated train set),
        in the worker's session: for code that gathers the worker's batches there (:meth:`FederatedDataLoader.gather`)
        instead of a pointer batch."""
        loader = loader if loader is not None else self.loader
        assert loader is not None
        shard = loader.federated_dataset[worker.id]
        with self.at_worker(shard, (shard, shard.location)) as session:
            yield session.real

    def record(self, worker: BaseWorker, output: Any, real_batch: Any) -> None:
        """The step's loss, into the per-worker statistics (logged once a round), unless the worker's policy keeps
        its scalars (``release_scalars=False``)."""
        loss = output.get("loss") if isinstance(output, dict) else output
        if isinstance(loss, Tensor) and releases_scalars(worker):
            loss = loss.detach()
            self.rounds.losses.add(worker.id, loss, batch_size_of(real_batch))
            self.rounds.stats.loss(worker.id, loss)

    def flush_losses(self) -> None:
        """Log each worker's mean loss since the last flush, recorded in its audit log (rule ``release_scalars``)."""
        means = self.rounds.losses.means_by_worker()
        if not means:
            return
        workers = {w.id: w for w in self.loader.workers} if self.loader is not None else {}
        for worker_id in means:
            if worker_id in workers:
                audit(workers[worker_id], "scalar", "log", "release_scalars", ())
        self.calls.log({f"train_loss/{w}": value for w, value in means.items()})

    def setup(self, trainer: Any) -> None:
        """Called from the strategy's ``setup`` (the module, optimizers and trainer exist)."""

    def process_dataloader(self, loader: FederatedDataLoader) -> Any:
        """What Lightning iterates for training."""
        return loader

    def batch_start(self, batch: Any) -> Any:
        """A training batch reaches the strategy (before callbacks see it); returns the batch Lightning passes on."""
        return batch

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def backward(self, loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        return self.calls.backward(loss, optimizer, *args, **kwargs)

    def post_backward(self) -> None:
        """After backward, before the optimizer step."""

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        raise NotImplementedError

    def before_evaluation(self) -> None:
        """Validation is about to run (within fit)."""

    def after_evaluation(self) -> None:
        """Validation has run."""

    def open_round_state(self) -> dict[str, Any] | None:
        """The open round's state for a checkpoint that continues it exactly, or ``None``."""
        return None

    def before_checkpoint(self) -> None:
        """A checkpoint is about to be taken of the module."""

    def end_epoch(self) -> None:
        """Lightning's training epoch ends, before its epoch-end hooks and checkpoints."""

    def end_fit(self) -> None:
        """Fit ends (also early: ``max_steps``, a stop requested by a callback; after an exception, ``teardown``)."""

    def teardown(self) -> None:
        """The strategy is torn down."""

    def describe(self) -> str:
        return self.name


def with_batch(real: Any, args: tuple, kwargs: dict, batch_idx: int | None = None) -> tuple[tuple, dict]:
    """Lightning's ``training_step`` arguments with the pointer batch replaced by the worker's real batch (and
    Lightning's ``batch_idx`` by ``batch_idx``, where given).

    Example:
        >>> with_batch("real", ("pointer", 7), {}, batch_idx=2)
        (('real', 2), {})
    """
    args, kwargs = ((real, *args[1:]), kwargs) if args else (args, {**kwargs, "batch": real})
    if batch_idx is not None and len(args) > 1:
        args = (args[0], batch_idx, *args[2:])
    elif batch_idx is not None and "batch_idx" in kwargs:
        kwargs = {**kwargs, "batch_idx": batch_idx}
    return args, kwargs
