"""The seed tutorial's way: one model follows every batch to the worker that owns it and back.

Training equals centralized training on the same batch order (tested). There are no rounds and no aggregation; the
step runs at the batch's worker inside its session.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(TensorDataset(torch.randn(8, 4), torch.arange(8) % 2), workers=2,
    ...                                          batch_size=4)
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(mode="follow"), max_epochs=1, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> type(trainer.strategy.backend).__name__
    'FollowBackend'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

from lightning_fed.backends.base import Backend, with_batch, worker_of
from lightning_fed.data.loader import FederatedDataLoader


class FollowBackend(Backend):
    """One model follows the batches (see the module docstring)."""

    name = "follow"
    batch: Any = None  # the pointer batch of the current step
    target: tuple[Any, Any] | None = None  # its (refs, worker)

    def process_dataloader(self, loader: FederatedDataLoader) -> Any:
        self.loader = loader
        for worker in loader.workers:
            self.rounds.stats.register(worker.id, len(loader.federated_dataset[worker.id]))
        return loader

    def batch_start(self, batch: Any) -> Any:
        self.target = worker_of(batch)  # read once a step: the session opens from it
        self.batch = batch
        self.rounds.stats.step(self.target[1].id)
        return batch

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        if self.session is None:  # manual optimization: Lightning calls training_step directly
            with self.at_worker(args[0] if args else kwargs["batch"]):
                return self.training_step(args, kwargs)
        session = self.session
        args, kwargs = with_batch(session.real, args, kwargs)
        output = self.calls.training_step(*args, **kwargs)
        self.record(session.worker, output, session.real)
        return output

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        if self.session is not None:  # manual optimization: the user steps inside training_step
            return self.calls.optimizer_step(optimizer, closure, model, **kwargs)
        try:
            with self.at_worker(self.batch, self.target):  # the closure runs training_step and backward at the worker
                return self.calls.optimizer_step(optimizer, closure, model, **kwargs)
        finally:
            self.batch = None
