"""``FederatedStrategy``: an unchanged LightningModule trains federated, with one Trainer for the whole run.

The train dataloader (from :class:`~lightning_fed.data.FederatedDataModule`) yields batches of pointers. Each batch's
step runs at the worker that owns it, inside that worker's session (``with worker.session(batch) as real:``): the
user's ``training_step``, ``backward`` and the optimizer step on the worker's own tensors. The strategy never
``get()``s data. It is a thin shell: each Lightning hook hands off to its parts, the round lifecycle
(:class:`~lightning_fed.rounds.Rounds`) and an execution backend (:mod:`lightning_fed.backends`).

* ``mode="fedavg"`` (default): a Lightning epoch is a round. Each sampled worker starts from the global model,
  trains ``local_epochs`` over its shard (or ``local_steps`` batches) with its own optimizer state, and the global
  model becomes the aggregate of the workers' updates. Validation runs locally on the global model.
* ``mode="follow"`` (alias ``"seed"``): the seed tutorial's way: one model follows every batch to its worker.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_fed import FederatedDataModule, FederatedStrategy
    >>> from lightning_fed.testing import BoringClassifier
    >>> data = FederatedDataModule.from_datasets(
    ...     TensorDataset(torch.randn(32, 4), torch.arange(32) % 2), workers=["westside", "grapevine"], batch_size=8
    ... )
    >>> trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=2, logger=False, enable_checkpointing=False,
    ...                      enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringClassifier(), datamodule=data)
    >>> trainer.strategy.round_index, sorted(trainer.strategy.worker_summary())
    (2, ['grapevine', 'westside'])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_fed._compat.lightning import set_up_train_data_again, trainer_of, tuner_running
from lightning_fed.aggregation import Aggregator
from lightning_fed.backends import Backend, DistributedBackend, FollowBackend, SequentialBackend, VectorizedBackend
from lightning_fed.backends.threads import ThreadGovernor
from lightning_fed.backends.vectorized.choose import VectorizeChoice, choose_backend, chosen
from lightning_fed.data.loader import FederatedDataLoader
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.logs import listed
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.rounds import ByzantineWorkers, ClientFailures, RoundPlan, Rounds, model_tensors
from lightning_fed.rounds.stats import worker_table
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.strategies import glue, options
from lightning_fed.strategies.parallel import FederatedParallelStrategy
from lightning_fed.strategies.parts import build_aggregator, per_worker_schedulers
from lightning_fed.workers.base import BaseWorker


class FederatedStrategy(FederatedParallelStrategy):
    """Routes each training step to the worker that owns the batch; aggregates rounds (see the module docstring).

    Args:
        mode: ``"fedavg"`` (rounds and aggregation) or ``"follow"``/``"seed"`` (one model follows the batches).
        aggregation: an aggregator name (``"fedavg"``) or an :class:`~lightning_fed.aggregation.Aggregator`.
        local_epochs: passes over its shard each sampled worker makes per round (default 1).
        local_steps: batches per worker per round instead of ``local_epochs`` (cycling and reshuffling the shard).
        clients_per_round: how many workers a round samples (an int; ``None``: all).
        client_fraction: the fraction of the workers a round samples, in (0, 1], instead of ``clients_per_round``.
        reset_optimizer_state: start every worker's optimizer state afresh each round (default: keep it).
        seed: drives client sampling and dropouts; ``None`` takes the train loader's seed (one seed drives the run).
        min_clients: the fewest worker updates a round needs; fewer stops the run with ``RoundFailedError``.
        tolerate_failures: leave a worker whose ``training_step`` raises out of the round and go on, instead of
            stopping the run with the error (see :mod:`~lightning_fed.rounds.failures`).
        dropout_rate, deadline_steps, straggler_policy: simulated dropouts and stragglers.
        byzantine: :class:`~lightning_fed.rounds.ByzantineWorkers` or a dict such as ``{"w3": "scale:100"}``.
        secure_aggregation: ``True`` or a :class:`~lightning_fed.secure_aggregation.SecureAggregationConfig`.
        privacy: a :class:`~lightning_fed.privacy.dp.DPConfig` (client-level DP-FedAvg or sample-level DP-SGD).
        accept_plain_checkpoint: ``fit`` from a plain Lightning checkpoint starts from its weights (else refused).
        vectorize: ``True``: each round's workers train together under ``torch.vmap``; ``"auto"``: if measured faster.
        local_loop: ``"auto"``, ``"steps"`` or ``"fused"``: a worker's local batches as one Lightning step (fused).
        parallel_workers: how many of a round's workers train at once, one thread each (``backends.threaded``).
        num_threads: torch threads in fit: ``"auto"`` (the cores others leave free, each round), a count, or ``None``.
        start_method, process_group_backend, timeout, cluster_environment: for ``Trainer(devices=N, num_nodes=M)``:
            each process trains its share of the workers (:mod:`~lightning_fed.backends.distributed`).
    """

    strategy_name = "federated"
    vectorize_choice: VectorizeChoice | None = None  # vectorize="auto": what the last fit's measurement chose

    def __init__(
        self,
        mode: str = "fedavg",
        aggregation: str | Aggregator = "fedavg",
        local_epochs: int | None = None,
        local_steps: int | None = None,
        clients_per_round: int | None = None,
        client_fraction: float | None = None,
        reset_optimizer_state: bool = False,
        seed: int | None = None,
        min_clients: int = 1,
        tolerate_failures: bool = False,
        dropout_rate: float = 0.0,
        deadline_steps: int | None = None,
        straggler_policy: str = "drop",
        byzantine: ByzantineWorkers | dict[Hashable, Any] | None = None,
        secure_aggregation: bool | SecureAggregationConfig = False,
        privacy: DPConfig | None = None,
        vectorize: bool | str = False,
        local_loop: str = "auto",
        parallel_workers: int = 1,
        num_threads: int | str | None = "auto",
        accept_plain_checkpoint: bool = False,
        start_method: str = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        cluster_environment: ClusterEnvironment | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
    ) -> None:
        super().__init__(
            accelerator=accelerator, cluster_environment=cluster_environment, checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin, process_group_backend=process_group_backend, timeout=timeout,
            start_method=start_method,  # type: ignore[arg-type]
        )  # fmt: skip
        failures = ClientFailures(dropout_rate, deadline_steps, straggler_policy, min_clients)
        byzantine = ByzantineWorkers.coerce(byzantine)
        self.mode = options.check_options(
            mode=mode, local_epochs=local_epochs, local_steps=local_steps, seed=seed,
            tolerate_failures=tolerate_failures, reset_optimizer_state=reset_optimizer_state, vectorize=vectorize,
            accept_plain_checkpoint=accept_plain_checkpoint, local_loop=local_loop, num_threads=num_threads,
            simulates_failures=failures.enabled or byzantine is not None, parallel_workers=parallel_workers,
        )  # fmt: skip
        options.check_secure_aggregation(secure_aggregation)
        aggregator = build_aggregator(aggregation, secure_aggregation, privacy, self.mode)
        self._rounds = Rounds(aggregator, failures, byzantine, reset_optimizer_state)
        self.tolerate_failures = self._rounds.tolerate_failures = tolerate_failures
        self.vectorize, self.local_loop, self.parallel_workers = vectorize, local_loop, parallel_workers
        self.accept_plain_checkpoint = accept_plain_checkpoint
        self.threads = ThreadGovernor(num_threads)  # torch's thread count during fit (backends.threads)
        self.local_epochs, self.local_steps = (local_epochs if local_epochs is not None else 1), local_steps
        self.clients_per_round, self.client_fraction, self.seed = clients_per_round, client_fraction, seed
        self._backend: Backend | None = None
        self._tuning: Backend | None = None  # Lightning's lr_find runs its range test on one continuous stream
        self._restored: dict[str, Any] | None = None
        self._restored_callbacks: dict[str, Any] = {}

    # -- parts the strategy owns ----------------------------------------------------------------------------------
    @property
    def aggregator(self) -> Aggregator:
        return self._rounds.aggregator

    @property
    def rounds(self) -> Rounds:
        """The round lifecycle: global model, per-worker state, failures, statistics."""
        return self._rounds

    @property
    def backend(self) -> Backend | None:
        """How the workers run (set up in ``setup``): follow, sequential, vectorized or distributed."""
        return self._tuning if self._tuning is not None else self._backend

    @property
    def round_index(self) -> int:
        """Rounds completed (aggregated) so far."""
        return self._rounds.index

    @property
    def workers(self) -> list[BaseWorker]:
        loader = self._backend.loader if self._backend is not None else None
        return list(loader.workers) if loader is not None else []

    def round_plan(self, round_index: int) -> RoundPlan:
        planner = getattr(self._backend, "planner", None)
        if planner is None:
            raise FederatedConfigError("no federated train dataloader yet: use a FederatedDataModule.")
        return planner.plan(round_index)

    # -- set-up ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer) -> None:
        options.check_trainer_options(trainer, self.mode)
        self._backend = None  # until this fit's backend exists, a train loader is only planned (process_dataloader)
        super().setup(trainer)
        module = self.lightning_module
        self._rounds.attach(model_tensors(module), len(list(module.parameters())), module)
        self._backend = self._make_backend(trainer)
        if trainer.training:
            self.threads.start()
            self._backend.setup(trainer)
            glue.resume_open_round(self._backend, self._restored)
            glue.apply_limits(trainer, self._backend)
            self._backend = glue.choose_local_loop(self.local_loop, self._backend, trainer, self.parallel_workers)
            set_up_train_data_again(trainer)  # if set up in super().setup(): through this backend, as it is now
        glue.add_callbacks(trainer, self.aggregator, self._restored_callbacks)

    def _make_backend(self, trainer: pl.Trainer | None) -> Backend:
        calls = glue.lightning_calls(self)
        if self.mode == "follow":
            return FollowBackend(calls, self._rounds)
        planning = {"clients_per_round": self.clients_per_round, "client_fraction": self.client_fraction,
                    "local_epochs": self.local_epochs, "local_steps": self.local_steps, "seed": self.seed}  # fmt: skip
        kwargs = {"tolerate_failures": self.tolerate_failures, "threads": self.threads,
                  "step_schedulers": per_worker_schedulers(trainer) if trainer is not None else None}  # fmt: skip
        if self.is_distributed:
            return DistributedBackend(calls, self._rounds, planning, processes=self.processes(), **kwargs)
        if self.vectorize is True and trainer is not None and trainer.training:
            return VectorizedBackend(calls, self._rounds, planning, **kwargs)
        return SequentialBackend(calls, self._rounds, planning, **kwargs)

    @override
    def check_processes(self, where: str) -> None:
        options.check_process_options(self.mode, self.vectorize, where, self.parallel_workers)
        self.aggregator.check_processes()

    @override
    def process_dataloader(self, dataloader: object) -> object:
        if not isinstance(dataloader, FederatedDataLoader):
            return dataloader
        if self._backend is None:  # before setup made this fit's backend (estimated_stepping_batches read in
            return glue.provisional_loader(self._make_backend(None), dataloader)  # configure_optimizers): planned only
        self._tuning = None
        if self.mode == "fedavg" and tuner_running(trainer_of(self.lightning_module)):  # lr_find's range test
            rank_zero_info("FederatedStrategy: the learning-rate finder runs on one continuous stream of batches.")
            self._tuning = FollowBackend(glue.lightning_calls(self), Rounds(self.aggregator))
            return self._tuning.process_dataloader(dataloader)
        if getattr(dataloader, "remote", False) and not getattr(self._backend, "remote", False):
            self._backend = glue.remote_backend(self, self._backend)  # the sites' data: rounds run at the sites
        if self.vectorize == "auto" and chosen(self._backend) is None:  # before a fit's first round: measured once
            self._backend, self.vectorize_choice = choose_backend(self._backend, dataloader)
        return self._backend.process_dataloader(dataloader)

    # -- the training step: each hook hands off to the backend ----------------------------------------------------
    @override
    def batch_to_device(self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0) -> Any:
        if glue.moved_by_lightning(batch):
            batch = super().batch_to_device(batch, device, dataloader_idx)
        if self.backend is not None and self.lightning_module.trainer.training:
            return self.backend.batch_start(batch)  # before any callback sees the batch: the right worker is active
        return batch

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        assert self.backend is not None
        return self.backend.training_step(args, kwargs)

    @override
    def backward(self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        assert self.backend is not None
        return self.backend.backward(closure_loss, optimizer, *args, **kwargs)

    @override
    def post_backward(self, closure_loss: Tensor) -> None:
        assert self.backend is not None
        self.backend.post_backward()

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        assert self.backend is not None
        return self.backend.optimizer_step(optimizer, closure, model, kwargs)

    # -- evaluation on the global model, start and end of fit -----------------------------------------------------
    @override
    def on_validation_start(self) -> None:
        if self.backend is not None:
            self.backend.before_evaluation()

    @override
    def on_validation_end(self) -> None:
        if self.backend is not None:
            self.backend.after_evaluation()

    @override
    def on_train_start(self) -> None:
        self.apply_restored_state()
        rank_zero_info(self.summary())

    def apply_restored_state(self) -> None:
        """Load a checkpoint's federated state, once the optimizers exist (resume)."""
        if self._restored is not None and self.optimizers:
            glue.load_federated_state(self, self._restored)
            self._restored = None

    @override
    def on_train_end(self) -> None:
        if self.backend is not None:
            self.backend.end_fit()
        rank_zero_info(self.worker_table())

    @override
    def teardown(self) -> None:
        self.threads.stop()
        if self._backend is not None:
            self._backend.teardown()
        super().teardown()

    def summary(self) -> str:
        """The configuration, as logged at fit start."""
        rows = self._rounds.stats.rows
        workers = listed([f"{w.id} ({rows.get(w.id, {}).get('samples', '?')} samples)" for w in self.workers])
        follow = "the model follows each batch to its worker (the seed's way)"
        how = self.backend.describe() if self.mode == "fedavg" and self.backend is not None else follow
        return f"FederatedStrategy: {len(self.workers)} workers [{workers}]; {how}."

    def worker_summary(self) -> dict[Hashable, dict[str, Any]]:
        """Per worker: samples, steps trained, last loss, and rounds it failed in, dropped out of, or was late for."""
        return self._rounds.stats.summary(self._rounds.failures)

    def worker_table(self) -> str:  # logged at the end of fit
        return worker_table(self.worker_summary())

    # -- checkpoints ----------------------------------------------------------------------------------------------
    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.backend is not None:
            self.backend.before_checkpoint()  # a round whose steps are all done is aggregated first
        state = self._rounds.global_state(self.lightning_module.state_dict(keep_vars=True))
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in state.items()}

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        checkpoint[glue.CHECKPOINT_KEY] = self.gather_state(glue.federated_state(self))  # every process's part
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {} if weights_only is None else {"weights_only": weights_only}  # Lightning < 2.6 has no such argument
        checkpoint = glue.read_checkpoint(super().load_checkpoint, checkpoint_path, kwargs)
        self._restored = glue.restored_state(checkpoint, self.root_device)
        self._restored_callbacks = dict(checkpoint.get("callbacks", {}))
        if self.lightning_module is None or self.lightning_module.trainer.state.fn != "fit":
            return checkpoint
        return glue.checked_for_fit(checkpoint, checkpoint_path, self.accept_plain_checkpoint)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, mode, description in (
            ("federated", "fedavg", "Federated learning: FedAvg rounds over pointer batches (lightning_fed)"),
            ("fedavg", "fedavg", "Federated learning with FedAvg (lightning_fed)"),
            ("federated_follow", "follow", "Federated learning, the model following each batch (lightning_fed)"),
        ):
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=description, mode=mode)
