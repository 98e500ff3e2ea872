"""Sample-level differential privacy: DP-SGD at each worker (Abadi et al. 2016), Opacus' step and accounting.

The user's LightningModule is left as it is: hooks are attached to its layers once (no wrapper module). With
``DPConfig(grad_sample_mode="ghost")`` (what ``"auto"`` picks for Linear/Conv2d models) a
:class:`~lightning_fed.privacy.dp.ghost.GhostClipper` keeps each layer's inputs and output gradients, from which the
per-sample norms and the clipped sum come without per-sample gradients; with ``"hooks"`` Opacus' ``GradSampleHooks``
leave each sample's gradient in ``p.grad_sample``. Both give the same step. At each worker step, where the strategy
calls ``adjust_gradients`` (after backward, before gradient clipping and the optimizer step), :class:`DPSGDAggregator`
replaces ``p.grad`` with Opacus' ``DPOptimizer`` gradient: per-sample clipping to ``max_grad_norm``, the sum,
Gaussian noise of std ``noise_multiplier * max_grad_norm``, division by the expected batch size. The user's optimizer
then steps as usual.

Each worker has its own accountant (one step per optimizer step at ``q = batch_size / shard size``) and, with
``target_epsilon``, its own noise multiplier (calibrated for its ``q`` and planned steps) or its own stop: once its
next step would pass the target, its gradients are dropped (``p.grad = None``: the optimizer leaves the model as it
is) and it spends nothing more. Batches should be Poisson-sampled (:class:`~lightning_fed.privacy.dp.PoissonBatches`),
which the accountants assume.

The noise comes from a seeded ``torch.Generator`` per device, whose state the checkpoints hold (exact resume; whoever
reads a checkpoint can replay the noise), or with ``DPConfig(secure_mode=True)`` from the OS, never saved
(:mod:`~lightning_fed.privacy.dp.noise`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.wrapper import AggregatorWrapper
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.privacy.dp import functional as dpf
from lightning_fed.privacy.dp.accountant import PrivacyAccountant, calibrate_noise_multiplier, require_opacus
from lightning_fed.privacy.dp.config import DPConfig
from lightning_fed.privacy.dp.ghost import GhostClipper
from lightning_fed.privacy.dp.grad_sample import attach_per_sample_clipping, reset_grad_samples
from lightning_fed.privacy.dp.noise import SECURE
from lightning_fed.privacy.dp.poisson import PoissonBatches


class DPSGDAggregator(AggregatorWrapper):
    """Sample-level DP-SGD at each worker, wrapped around any aggregator ``inner`` (see the module docstring).

    Args:
        inner: the aggregator of the (already private) worker updates; any, sum or not.
        config: a :class:`~lightning_fed.privacy.dp.DPConfig` with ``level="sample"``.

    Call :meth:`attach` (or :meth:`attach_federated`) once before training.

    Example:
        >>> from lightning_fed.aggregation import FedAvg
        >>> from lightning_fed.privacy.dp import DPConfig
        >>> agg = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.1, max_grad_norm=1.0))
        >>> agg.is_sum, agg.attached
        (True, False)
    """

    name = "dpsgd"

    def __init__(self, inner: Aggregator, config: DPConfig) -> None:
        if not isinstance(config, DPConfig) or config.level != "sample":
            raise FederatedConfigError(
                f"DPSGDAggregator adds sample-level DP-SGD and got `config={config!r}`: pass DPConfig(level='sample', "
                "...) (client-level DP-FedAvg is DPAggregator)."
            )
        if not isinstance(inner, Aggregator):
            raise FederatedConfigError(f"DPSGDAggregator `inner={inner!r}` is not an Aggregator: pass e.g. FedAvg().")
        super().__init__(inner)
        self.config = config
        self.accountants: dict[Hashable, PrivacyAccountant] = {}
        self.noise_multipliers: dict[Hashable, float] = {}
        self.sample_rates: dict[Hashable, float] = {}
        self.expected_batch_sizes: dict[Hashable, int] = {}
        self.poisson: PoissonBatches | None = None
        self._module: nn.Module | None = None
        self._hooks: Any = None
        self._generators: dict[str, torch.Generator] = {}
        self._warned_poisson = False
        self._remaining: dict[Hashable, int] = {}  # steps left before target_epsilon, by worker

    # -- attaching to the model and the data ------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._hooks is not None

    @property
    def grad_sample_mode(self) -> str | None:
        """``"ghost"`` or ``"hooks"``: how the attached module's samples are clipped (``None`` before attaching)."""
        if self._hooks is None:
            return None
        return "ghost" if isinstance(self._hooks, GhostClipper) else "hooks"

    def attach(
        self,
        module: nn.Module,
        num_samples: Mapping[Hashable, int],
        batch_size: int,
        steps_per_round: Mapping[Hashable, int] | None = None,
    ) -> None:
        """Hook ``module`` for per-sample clipping (``config.grad_sample_mode``) and set each worker's sampling rate
        ``batch_size / n_w``, expected batch size and accountant (calibrating its noise multiplier for
        ``num_rounds * steps_per_round[w]`` steps when the config gives ``target_epsilon`` without
        ``noise_multiplier``)."""
        if self._hooks is None or self._module is not module:
            self.detach()
            self._hooks = attach_per_sample_clipping(module, self.config.loss_reduction, self.config.grad_sample_mode)
            self._module = module
        for worker_id, n in num_samples.items():
            q = min(1.0, batch_size / n)
            self.sample_rates[worker_id] = q
            self.expected_batch_sizes[worker_id] = max(1, round(q * n))
            self.accountants.setdefault(worker_id, PrivacyAccountant(self.config.accountant))
            if worker_id not in self.noise_multipliers:
                self.noise_multipliers[worker_id] = self._worker_noise_multiplier(worker_id, q, steps_per_round)

    def attach_federated(
        self, module: nn.Module, loader: Any, steps_per_round: Mapping[Hashable, int] | None = None
    ) -> None:
        """:meth:`attach` with the shard sizes and batch size of a ``FederatedDataLoader``, and its Poisson batches
        (``self.poisson``) when ``poisson_sampling`` is on."""
        sizes = {w.id: len(loader.federated_dataset[w.id]) for w in loader.workers}
        self.attach(module, sizes, loader.batch_size, steps_per_round)
        if self.config.poisson_sampling and self.poisson is None:
            self.poisson = PoissonBatches(loader)

    def _worker_noise_multiplier(
        self, worker_id: Hashable, sample_rate: float, steps_per_round: Mapping[Hashable, int] | None
    ) -> float:
        if self.config.noise_multiplier is not None:
            return self.config.noise_multiplier
        if steps_per_round is None or worker_id not in steps_per_round:
            raise FederatedConfigError(
                f"DPConfig(target_epsilon={self.config.target_epsilon!r}) without noise_multiplier calibrates each "
                f"worker's noise for its planned steps, unknown for worker {worker_id!r}: pass steps_per_round to "
                "attach(), or set noise_multiplier."
            )
        return calibrate_noise_multiplier(
            target_epsilon=self.config.target_epsilon,  # type: ignore[arg-type]
            delta=self.config.delta,
            sample_rate=sample_rate,
            steps=self.config.num_rounds * steps_per_round[worker_id],  # type: ignore[operator]
            accountant=self.config.accountant,
        )

    def detach(self) -> None:
        """Take Opacus' hooks and attributes off the module."""
        if self._hooks is not None:
            cleanup = getattr(self._hooks, "cleanup", None)  # Opacus >= 1.6; before, remove hooks and attributes
            if callable(cleanup):
                cleanup()
            else:
                self._hooks.remove_hooks()
                reset_grad_samples(self._module)  # type: ignore[arg-type]
        self._hooks, self._module = None, None
        if self.poisson is not None:
            self.poisson.close()
            self.poisson = None

    def worker_batches(self, loader: Any, worker: Any, epoch: int) -> Any:
        """The worker's batches for ``epoch``: Poisson-sampled when on (see :meth:`attach_federated`)."""
        if self.poisson is not None:
            return self.poisson.worker_batches(worker, epoch)
        return loader.worker_batches(worker, epoch=epoch)

    def worker_positions(self, loader: Any, worker: Any, epoch: int) -> Iterator[Tensor]:
        """The positions in its shard of each of the worker's batches of ``epoch`` (tensors, drawn as they are
        asked for): what :meth:`worker_batches` gathers, for a loop that gathers its batches at the worker itself."""
        if self.poisson is not None:
            return self.poisson.positions(worker, epoch)
        return loader.batch_positions(worker, epoch=epoch)

    # -- the aggregator interface: DP-SGD at the worker, everything else by the inner aggregator ---------------------
    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        require_opacus("sample-level differential privacy")
        self.inner.setup(worker_ids)

    @override
    def check_processes(self) -> None:
        raise FederatedConfigError(
            "DPConfig(level='sample') (DP-SGD with a privacy accountant per worker) runs in one process only for now: "
            "each worker's accountant and budget stop would live in another process than the privacy monitor. Pass "
            "devices=1, num_nodes=1, or use client-level DP (DPConfig(level='client')) with several processes."
        )

    @override
    def worker_start(self, worker_id: Hashable, global_tensors: Sequence[Tensor]) -> None:
        if isinstance(self._hooks, GhostClipper):
            self._hooks.reset()
        elif self._module is not None:
            reset_grad_samples(self._module)
        self.inner.worker_start(worker_id, global_tensors)

    def can_step(self, worker_id: Hashable) -> bool:
        """Whether ``worker_id`` may take one more private step without passing ``target_epsilon``."""
        return self.remaining_steps(worker_id) > 0

    def remaining_steps(self, worker_id: Hashable) -> float:
        """The private steps ``worker_id`` has left before ``target_epsilon`` (``inf`` without a target); searched
        once with Opacus' accountant, then counted down."""
        if self.config.target_epsilon is None:
            return float("inf")
        if worker_id not in self._remaining:
            self._remaining[worker_id] = self.accountants[worker_id].max_steps(
                self.config.delta,
                self.config.target_epsilon,
                noise_multiplier=self.noise_multipliers[worker_id],
                sample_rate=self.sample_rates[worker_id],
            )
        return self._remaining[worker_id]

    @override
    def adjust_gradients(self, worker_id: Hashable, params: Sequence[Tensor], global_params: Sequence[Tensor]) -> None:
        if self._hooks is None or worker_id not in self.accountants:
            raise LightningFedError(
                f"DPSGDAggregator has no per-sample gradients for worker {worker_id!r}: call attach(module, ...) (or "
                "attach_federated) before training so that Opacus' hooks see the forward and backward passes."
            )
        self.privatize_gradients(worker_id, params)
        self.inner.adjust_gradients(worker_id, params, global_params)

    def privatize_gradients(self, worker_id: Hashable, params: Sequence[Tensor]) -> None:
        """Replace each trainable ``p.grad`` by the DP-SGD gradient of its samples' gradients (``p.grad_sample``, or
        the ghost clipper's records) and step the worker's accountant; with the worker's budget spent, set
        ``p.grad = None`` instead (no step, no cost)."""
        trainable = [p for p in params if p.requires_grad]
        if not self.can_step(worker_id):
            for p in trainable:
                p.grad = None
            if isinstance(self._hooks, GhostClipper):
                self._hooks.reset()
            else:
                for p in trainable:
                    p.grad_sample = None
            return
        if self.config.poisson_sampling and self.poisson is None and not self._warned_poisson:
            self._warned_poisson = True
            rank_zero_warn(
                "DPConfig(level='sample', poisson_sampling=True) but the batches are not Poisson-sampled by "
                "DPSGDAggregator.poisson: the reported epsilon assumes Poisson sampling."
            )
        if isinstance(self._hooks, GhostClipper):
            iterations = self._hooks.num_passes()
            if trainable:
                clip = float(self.config.clip_norm)  # type: ignore[arg-type]
                summed = self._hooks.clipped_sum(trainable, clip, self.config.loss_reduction)
                grads = dpf.noisy_gradients(summed, **self._noise_args(worker_id, trainable, iterations))
                for p, g in zip(trainable, grads):
                    p.grad = g
        else:
            iterations = self._hooked_gradients(worker_id, trainable)
        self._account(worker_id, iterations)

    def _noise_args(self, worker_id: Hashable, trainable: Sequence[Tensor], iterations: int) -> dict[str, Any]:
        return {
            "max_grad_norm": self.config.clip_norm,
            "noise_multiplier": self.noise_multipliers[worker_id],
            "expected_batch_size": self.expected_batch_sizes[worker_id],
            "generator": self._generator(trainable[0].device),
            "accumulated_iterations": iterations,
            "loss_reduction": self.config.loss_reduction,
        }

    def _hooked_gradients(self, worker_id: Hashable, trainable: list[Tensor]) -> int:
        """The DP-SGD gradients from Opacus' ``p.grad_sample``; returns the number of accumulated backwards."""
        samples = [getattr(p, "grad_sample", None) for p in trainable]
        iterations = max((len(g) if isinstance(g, list) else 1) for g in samples) if samples else 1
        flat = [dpf.flat_grad_sample(g) if g is not None else None for g in samples]
        rows = next((len(g) for g in flat if g is not None), 0)
        flat = [
            g if g is not None else torch.zeros((rows, *p.shape), dtype=p.dtype, device=p.device)
            for g, p in zip(flat, trainable)
        ]
        if trainable:
            dtypes = [p.dtype for p in trainable]
            grads = dpf.dp_sgd_gradients(flat, dtypes=dtypes, **self._noise_args(worker_id, trainable, iterations))
            for p, g in zip(trainable, grads):
                p.grad = g.view_as(p)
                p.grad_sample = None
        return iterations

    def _account(self, worker_id: Hashable, iterations: int) -> None:
        rate = min(1.0, self.sample_rates[worker_id] * iterations)
        self.accountants[worker_id].step(noise_multiplier=self.noise_multipliers[worker_id], sample_rate=rate)
        if worker_id in self._remaining:
            if rate == self.sample_rates[worker_id]:
                self._remaining[worker_id] -= 1
            else:  # an accumulated step spends at another rate: search again
                del self._remaining[worker_id]

    def _generator(self, device: torch.device) -> dpf.NoiseSource:
        if self.config.secure_mode:
            return SECURE  # stateless: nothing to save, replay or predict
        key = str(device)
        if key not in self._generators:
            seed = self.config.seed if self.config.seed is not None else torch.initial_seed()
            self._generators[key] = torch.Generator(device=device).manual_seed(int(seed) % (2**63))
        return self._generators[key]

    # -- privacy budget -----------------------------------------------------------------------------------------------
    def epsilon(self, worker_id: Hashable, delta: float | None = None) -> float:
        """The epsilon ``worker_id`` has spent so far (its own data's guarantee)."""
        return self.accountants[worker_id].epsilon(self.config.delta if delta is None else delta)

    def epsilons(self, delta: float | None = None) -> dict[Hashable, float]:
        return {w: self.epsilon(w, delta) for w in self.accountants}

    @property
    def should_stop(self) -> bool:
        """Whether every worker's budget is spent (never, without ``target_epsilon``)."""
        return bool(self.accountants) and not any(self.can_step(w) for w in self.accountants)

    def metrics(self) -> dict[str, float]:
        """Per worker epsilon (at the config's delta), and the largest."""
        eps = {f"dp/epsilon/{w}": e for w, e in self.epsilons().items()}
        return {**eps, "dp/epsilon": max(eps.values(), default=0.0)}

    # -- checkpoints --------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "accountants": {w: a.state_dict() for w, a in self.accountants.items()},
            "noise_multipliers": dict(self.noise_multipliers),
            "generators": {key: g.get_state() for key, g in self._generators.items()},  # none with secure_mode
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.inner.load_state_dict(state.get("inner", {}))
        for worker_id, saved in state.get("accountants", {}).items():
            self.accountants.setdefault(worker_id, PrivacyAccountant(self.config.accountant)).load_state_dict(saved)
        self.noise_multipliers.update({w: float(z) for w, z in state.get("noise_multipliers", {}).items()})
        self._remaining.clear()
        for key, saved in state.get("generators", {}).items() if not self.config.secure_mode else ():
            generator = torch.Generator(device=key)
            generator.set_state(saved)
            self._generators[key] = generator

    @override
    def __repr__(self) -> str:
        if "config" not in vars(self):  # a constructor that raised (a traceback or debugger prints the object)
            return "DPSGDAggregator(<not constructed>)"
        c = self.config
        return (
            f"DPSGDAggregator({self.inner!r}, noise_multiplier={c.noise_multiplier}, max_grad_norm={c.clip_norm}, "
            f"poisson_sampling={c.poisson_sampling}, accountant={c.accountant!r})"
        )
