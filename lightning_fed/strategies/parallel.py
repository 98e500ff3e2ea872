"""The Lightning side of :class:`~lightning_fed.strategies.FederatedStrategy` over several processes.

:class:`FederatedParallelStrategy` is a Lightning ``ParallelStrategy``: with ``devices * num_nodes > 1`` it launches
the processes the way ``DDPStrategy`` does (Lightning's subprocess script launcher by default,
``start_method="spawn"``/``"fork"`` for its multiprocessing launcher; ``torchrun`` and SLURM start them themselves
and Lightning's cluster environments find them), sets up the default ``torch.distributed`` process group (Gloo on
CPU, NCCL on GPU) and provides ``reduce``/``barrier``/``broadcast``/``all_gather`` over it, so that torchmetrics'
sync, ``ModelCheckpoint`` and ``EarlyStopping`` work as with DDP. There is no model wrapper and no gradient
all-reduce: each process trains its own workers (:mod:`~lightning_fed.backends.distributed`) and the processes meet
once a round, in the aggregation. With one device in one process nothing of this runs.
"""

from __future__ import annotations

import atexit
import functools
import io
from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed
from lightning.fabric.plugins import ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.distributed import group
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from torch import Tensor
from typing_extensions import override

from lightning_fed import logs
from lightning_fed._compat.lightning import (
    MultiProcessingLauncher,
    SubprocessScriptLauncher,
    default_process_group_backend,
    distributed_is_initialized,
    init_dist_connection,
    sync_ddp_if_available,
    sync_module_states,
)
from lightning_fed.backends.distributed import Processes, gather_state, select_state
from lightning_fed.collective import Collective
from lightning_fed.exceptions import FederatedConfigError

_START_METHODS = ("popen", "spawn", "fork", "forkserver")


@functools.cache  # registered once per process
def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, while it is still whole (once per process).

    A Gloo group left for the interpreter's finalization can abort the process ("terminate called without an active
    exception", SIGABRT): its worker threads still hold tensors when the interpreter is torn down, so a job whose
    training succeeded exits with an error, and ``torchrun`` reports the run as failed. Destroying the group at exit is
    what torch's documentation asks of every script; Lightning does it for NCCL only.

    Example:
        >>> destroy_process_group_at_exit(); destroy_process_group_at_exit()  # a second call registers nothing more
        >>> _destroy_default_group()  # what runs at exit: here no group exists, so nothing to do
    """
    atexit.register(_destroy_default_group)


def _destroy_default_group() -> None:
    if distributed_is_initialized():
        torch.distributed.destroy_process_group()


class _FederatedMultiProcessingLauncher(MultiProcessingLauncher):
    """Lightning's spawn/fork launcher, also bringing the strategy's round count and per-worker summary back to the
    main process (Lightning brings the weights and ``callback_metrics``)."""

    @override
    def get_extra_results(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        rounds = trainer.strategy.rounds
        buffer = io.BytesIO()
        torch.save(
            {
                "round_index": rounds.index,
                "summary": rounds.stats.summary(rounds.failures),
                "failures": rounds.failures.state_dict(),
            },
            buffer,
        )
        extra["lightning_fed_bytes"] = buffer.getvalue()
        return extra

    @override
    def update_main_process_results(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        if "lightning_fed_bytes" not in extra:
            return
        state = torch.load(io.BytesIO(extra["lightning_fed_bytes"]), weights_only=True)
        rounds = trainer.strategy.rounds
        rounds.index = int(state["round_index"])
        for worker_id, row in state["summary"].items():
            rounds.stats.rows[worker_id] = {key: row[key] for key in ("samples", "steps", "last_loss")}
        rounds.failures.load_state_dict(state["failures"])


class FederatedParallelStrategy(ParallelStrategy):
    """Processes, devices and collectives for :class:`~lightning_fed.strategies.FederatedStrategy` (see the module
    docstring); the federated logic is in the subclass.

    Args:
        cluster_environment: as for Lightning's ``DDPStrategy`` (default: detected: torchrun, SLURM, LSF, MPI, or
            Lightning's own).
        process_group_backend: ``"gloo"``, ``"nccl"``... (default: NCCL on CUDA, Gloo on CPU).
        timeout: how long a collective waits for the other processes.
        start_method: ``"popen"`` (default: Lightning's subprocess script launcher, which runs the script again for
            each extra process), ``"spawn"``, ``"fork"`` or ``"forkserver"`` (Lightning's multiprocessing launcher).
    """

    def __init__(
        self,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
        )
        if start_method not in _START_METHODS:
            raise FederatedConfigError(
                f"`start_method={start_method!r}` is not valid: choose one of {_START_METHODS} ('popen' runs the "
                "script again for each process, as Lightning's DDP does by default)."
            )
        self._num_nodes = 1
        self._process_group_backend = process_group_backend
        self._timeout = timeout
        self._start_method = start_method
        self._collective: Collective | None = None  # several processes: set up in setup_environment

    # -- processes and devices ------------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @num_nodes.setter
    def num_nodes(self, num_nodes: int) -> None:
        self._num_nodes = num_nodes

    @property
    def num_processes(self) -> int:
        """Processes per node: one per device."""
        return len(self.parallel_devices) if self.parallel_devices else 1

    @property
    def is_distributed(self) -> bool:
        """Whether workers train in several processes (Lightning then shards the evaluation data over them)."""
        return self.num_processes * self.num_nodes > 1

    @property
    @override
    def root_device(self) -> torch.device:
        if not self.parallel_devices:
            return torch.device("cpu")
        return self.parallel_devices[self.local_rank if self.is_distributed else 0]

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.num_nodes * self.num_processes, "rank": self.global_rank}

    @property
    def process_group_backend(self) -> str | None:
        return self._process_group_backend

    @property
    def collective(self) -> Collective | None:
        """The collectives the aggregation uses across processes (``None`` in one process)."""
        return self._collective

    @override
    def _configure_launcher(self) -> None:
        if not self.is_distributed:
            return
        self._check_processes()
        assert self.cluster_environment is not None
        if self._start_method == "popen":
            self._launcher = SubprocessScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
        else:
            self._launcher = _FederatedMultiProcessingLauncher(self, start_method=self._start_method)

    def _check_processes(self) -> None:
        """Refuse, before any process starts, what cannot run over several processes."""
        self.check_processes(f"devices={self.num_processes}, num_nodes={self.num_nodes}")

    def check_processes(self, where: str) -> None:
        """Raise :class:`FederatedConfigError` if this configuration cannot run over processes (``where`` says how
        many were asked for); subclasses refuse what they cannot spread."""

    @override
    def set_world_ranks(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
            self.cluster_environment.set_world_size(self.num_nodes * self.num_processes)
        rank_zero_only.rank = utils_rank_zero_only.rank = self.global_rank
        logs.set_rank(self.global_rank)

    @override
    def setup_environment(self) -> None:
        super().setup_environment()
        if self.is_distributed:
            self.setup_distributed()

    def setup_distributed(self) -> None:
        """The default process group, as Lightning's DDP sets it up (rendezvous from the cluster environment)."""
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._process_group_backend or default_process_group_backend(self.root_device)
        assert self.cluster_environment is not None
        kwargs: dict[str, Any] = {"timeout": self._timeout}
        if self.root_device.type != "cpu":
            kwargs["device_id"] = self.root_device
        created = not distributed_is_initialized()  # a process group the user set up is the user's to destroy
        init_dist_connection(self.cluster_environment, self._process_group_backend, **kwargs)
        if created and self._process_group_backend != "nccl":  # Lightning destroys an NCCL group at exit itself
            destroy_process_group_at_exit()
        self._collective = Collective(self.root_device if self._process_group_backend == "nccl" else "cpu")

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if self.is_distributed:
            assert self.model is not None
            sync_module_states(self.model)  # every process starts from process 0's model, as DDP does

    @override
    def model_to_device(self) -> None:
        assert self.model is not None
        self.model.to(self.root_device)

    # -- collectives for Lightning (metrics, checkpoints, early stopping) -----------------------------------------
    @override
    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any:
        if isinstance(tensor, Tensor) and self.is_distributed:
            return sync_ddp_if_available(tensor, group, reduce_op=reduce_op)
        return tensor

    @override
    def barrier(self, name: str | None = None) -> None:
        if not self.is_distributed or not distributed_is_initialized():
            return
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[self.root_device.index])
        else:
            torch.distributed.barrier()

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed or not distributed_is_initialized():
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src, group=group.WORLD)
        return holder[0]

    @override
    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor:
        if not self.is_distributed:
            return tensor
        return super().all_gather(tensor, group=group, sync_grads=sync_grads)

    @override
    def teardown(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.teardown()
        super(ParallelStrategy, self).teardown()

    # -- what FederatedStrategy asks -------------------------------------------------------------------------------
    def processes(self) -> Processes:
        """This process's rank among the processes and their collectives."""
        return Processes(
            rank=self.global_rank, world_size=self.num_processes * self.num_nodes, devices=self.num_processes,
            num_nodes=self.num_nodes, collective=self._collective,
        )  # fmt: skip

    def skipped_step_output(self) -> Tensor | None:
        """What ``training_step`` returns for a skipped step: ``None`` in one process (Lightning skips backward and
        the step); over several processes, where Lightning refuses ``None``, a zero loss that touches no parameter."""
        if not self.is_distributed:
            return None
        return torch.zeros((), device=self.root_device, requires_grad=True)

    def gather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Every process's federated checkpoint state as one (process 0 writes it)."""
        collective = self._collective
        return state if collective is None else gather_state(state, collective)

    def select_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This process's part of a checkpoint's federated state."""
        return select_state(state, self._collective if self._collective is not None else Collective())
