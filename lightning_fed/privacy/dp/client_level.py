"""Client-level differential privacy: DP-FedAvg (McMahan et al. 2018) as a wrapper around any sum aggregator.

Per round, with clip norm ``C`` and noise multiplier ``z``:

1. at each worker (``worker_update``): the update ``Δ_k = local - global`` is clipped to L2 norm ``C`` over all its
   floating tensors flattened together (parameters and float buffers); integer buffers (``num_batches_tracked``)
   are sent as zeros, since their count would leak how much a worker trained;
2. ``accumulate`` passes ``w_k * clip(Δ_k)`` on to the inner aggregator's sum, with weight 1. The weights are
   explicit: ``w_k = 1`` (``weighting="uniform"``) or ``w_k = min(n_k / weight_cap, 1)`` (``"capped"``), so each
   term's norm is at most ``C`` and the sum's sensitivity is ``C``. The inner aggregator divides the noisy sum by
   the number of contributions (public), never by sample counts, and its server step (FedAvgM, FedAdam...) is
   post-processing;
3. ``finalize`` adds ``N(0, (z C)^2)`` per coordinate to the sum before the inner aggregator divides
   (``noise="server"``), or each of the ``n`` workers sampled per round has already added ``N(0, (z C)^2 / n)`` to
   its clipped update (``noise="distributed"``: the sum carries the full noise, and no party sees an un-noised
   sum, which composes with secure aggregation). The accountant steps once, at ``clients_per_round / num_workers``,
   with the noise the sum carries: ``z``, or with distributed noise and only ``k`` of the ``n`` workers contributing
   (dropouts, failures, stragglers dropped: they added no noise) ``z * sqrt(k / n)``, so epsilon stays honest.

With ``adaptive_clipping`` (Andrew et al. 2021) each worker also reports ``b_k = 1[|Δ_k| <= C] - 1/2``; their sum gets
``N(0, sigma_b^2)`` and the bound moves as ``C *= exp(-eta (b - gamma))`` towards the ``gamma`` quantile of the update
norms; the update noise is then ``z_Δ = (z^-2 - (2 sigma_b)^-2)^-1/2`` so that the round costs ``z`` in all.

The noise comes from a seeded ``torch.Generator`` whose state the checkpoints hold (exact resume; whoever reads a
checkpoint can replay the noise), or with ``DPConfig(secure_mode=True)`` from the OS, never saved
(:mod:`~lightning_fed.privacy.dp.noise`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.functional import accumulation_dtype, is_float
from lightning_fed.aggregation.wrapper import AggregatorWrapper, aggregator_chain
from lightning_fed.data.loader import mix_seed
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.privacy.dp import functional as dpf
from lightning_fed.privacy.dp.accountant import PrivacyAccountant, calibrate_noise_multiplier, require_opacus
from lightning_fed.privacy.dp.config import DPConfig
from lightning_fed.privacy.dp.noise import SECURE

if TYPE_CHECKING:
    from lightning_fed.collective import Collective

_RANK_STREAM = 0xD157  # several processes, distributed noise: each process's workers draw from their own stream


class DPAggregator(AggregatorWrapper):
    """DP-FedAvg around a sum aggregator ``inner`` (see the module docstring).

    Args:
        inner: the sum aggregator that sums and divides (FedAvg, FedAvgM, FedAdam...): ``inner.is_sum`` must be true.
        config: a :class:`~lightning_fed.privacy.dp.DPConfig` with ``level="client"``.
        num_workers: workers in the federation (the strategy tells it through ``setup``).
        clients_per_round: workers sampled per round (the strategy tells it through ``check_num_clients``). Until
            known, the sampling rate is taken as 1: no amplification by sampling, a conservative epsilon.

    Example:
        >>> import torch
        >>> from lightning_fed.aggregation import FedAvg
        >>> from lightning_fed.privacy.dp import DPConfig
        >>> agg = DPAggregator(FedAvg(), DPConfig(noise_multiplier=0.0, clip_norm=1.0))
        >>> agg.begin_round([torch.zeros(2)])
        >>> sent = agg.worker_update("a", [torch.tensor([3.0, 4.0], dtype=torch.float64)], num_steps=1, lr=0.1)
        >>> [t.round(decimals=4) for t in sent]  # clipped to norm 1 at the worker
        [tensor([0.6000, 0.8000], dtype=torch.float64)]
        >>> agg.accumulate(sent, weight=30, worker_id="a")  # the weight used is 1 (weighting="uniform")
        >>> agg.finalize([torch.zeros(2)]), agg.accountant.history
        ([tensor([0.6000, 0.8000])], [(0.0, 1.0, 1)])
    """

    name = "dp"
    round_state = (
        "_round_clip", "_pending", "_reports", "_count_sum", "_count", "_count_noised", "_include", "_layout",
    )  # fmt: skip

    def __init__(
        self,
        inner: Aggregator,
        config: DPConfig,
        *,
        num_workers: int | None = None,
        clients_per_round: int | None = None,
    ) -> None:
        if not isinstance(config, DPConfig) or config.level != "client":
            raise FederatedConfigError(
                f"DPAggregator adds client-level DP and got `config={config!r}`: pass DPConfig(level='client', ...) "
                "(sample-level DP-SGD is DPSGDAggregator)."
            )
        if not isinstance(inner, Aggregator):
            raise FederatedConfigError(f"DPAggregator `inner={inner!r}` is not an Aggregator: pass e.g. FedAvg().")
        if not inner.is_sum:
            raise FederatedConfigError(
                f"DPConfig(level='client') adds noise to the sum of clipped updates, but `aggregation={inner!r}` is "
                "not a sum (is_sum=False): choose a sum aggregator (fedavg, fedavgm, fedadam, fedyogi, fedadagrad, "
                "fedprox) with client-level DP, or use DPConfig(level='sample') with a robust aggregator."
            )
        if getattr(inner, "name", None) == "scaffold":
            raise FederatedConfigError(
                "DPConfig(level='client') cannot wrap `aggregation='scaffold'`: SCAFFOLD's control variates are "
                "computed from each worker's unclipped update and reach the server without noise, which the privacy "
                "guarantee does not cover. Choose fedavg, fedavgm, fedprox or a FedOpt aggregator, or level='sample'."
            )
        if config.noise == "server" and _takes_the_sum_at_workers(inner):
            raise FederatedConfigError(
                f"DPConfig(noise='server') adds the noise to the sum on the server, but `aggregation={inner!r}` takes "
                "the sum by secure aggregation, so the server never holds it before the inner aggregator divides: use "
                "DPConfig(noise='distributed') with secure_aggregation (each worker adds its share of the noise), or "
                "secure_aggregation=False."
            )
        if config.adaptive_clipping and _takes_the_sum_at_workers(inner):
            raise FederatedConfigError(
                f"DPConfig(adaptive_clipping=True) with secure aggregation (`aggregation={inner!r}`) is refused: each "
                "worker's clipped-or-not report reaches the server on its own, outside the masked sum, so the server "
                "would learn per worker whether its update norm passed the clip norm. Use a fixed clip_norm "
                "(adaptive_clipping=False) with secure aggregation, or adaptive clipping without it."
            )
        super().__init__(inner)
        self.config = config
        self.num_workers = num_workers
        self.clients_per_round = clients_per_round
        self.clip_norm = float(config.clip_norm)  # type: ignore[arg-type]
        self.noise_multiplier: float | None = config.noise_multiplier
        self.accountant = PrivacyAccountant(config.accountant)
        self.rounds = 0
        self.last_weights: dict[Hashable, float] = {}  # the weights w_k of the last noisy sum, by worker
        self._generator: torch.Generator | None = None
        self._include: list[bool] = []
        self._round_clip = self.clip_norm
        self._pending: tuple[list[Tensor], Hashable] | None = None
        self._reports: dict[Hashable, float] = {}  # b_k - 1/2 (noised with distributed noise), by worker
        self._count_sum = 0.0
        self._count = 0
        self._collective: Collective | None = None
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []  # the round's update tensors
        self._count_noised = False  # several processes: sync_round already added the clipped count's noise

    # -- set-up -----------------------------------------------------------------------------------------------------
    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        require_opacus("client-level differential privacy")
        self.num_workers = len(worker_ids)
        self.inner.setup(worker_ids)

    @override
    def drop(self, worker_id: Hashable) -> None:
        """``worker_id`` failed before sending its update (passed on to an inner aggregator that tracks it)."""
        self._reports.pop(worker_id, None)
        super().drop(worker_id)

    @override
    def check_num_clients(self, num_clients: int) -> None:
        self.inner.check_num_clients(num_clients)
        self.clients_per_round = int(num_clients)
        self._update_noise_multiplier()  # fail now if adaptive clipping's count noise is too small

    @property
    def sample_rate(self) -> float:
        """``clients_per_round / num_workers`` (1 while either is unknown)."""
        if not self.num_workers or not self.clients_per_round:
            return 1.0
        return min(1.0, self.clients_per_round / self.num_workers)

    def _noise_multiplier(self) -> float:
        if self.noise_multiplier is None:  # target_epsilon and num_rounds: calibrate once, before the first round
            self.noise_multiplier = calibrate_noise_multiplier(
                target_epsilon=self.config.target_epsilon,  # type: ignore[arg-type]
                delta=self.config.delta,
                sample_rate=self.sample_rate,
                steps=self.config.num_rounds,  # type: ignore[arg-type]
                accountant=self.config.accountant,
            )
        return self.noise_multiplier

    def _round_noise_multiplier(self) -> float:
        """The multiplier of the noise in this round's sum: ``z``, or ``z sqrt(k / n)`` with distributed noise when
        only ``k`` of the ``n`` expected workers contributed (each adds ``1 / n`` of the variance)."""
        z = self._noise_multiplier()
        if self.config.noise != "distributed" or not self.clients_per_round:
            return z
        k, n = min(self._count, self.clients_per_round), self.clients_per_round
        return z if k == n else z * math.sqrt(k / n)

    def _next_noise_multiplier(self) -> float:
        """What :attr:`should_stop` assumes the next round carries: ``z``, or with distributed noise the smallest
        multiplier a round has carried so far (the most dropouts seen)."""
        z = self._noise_multiplier()
        if self.config.noise != "distributed":
            return z
        return min([z, *(h[0] for h in self.accountant.history)])

    def _count_stddev(self, contributions: int | None = None) -> float:
        if self.config.clipped_count_stddev is not None:
            return float(self.config.clipped_count_stddev)
        expected = self.clients_per_round or contributions or 1
        return expected / 20.0

    def _update_noise_multiplier(self) -> float:
        z = self._noise_multiplier()
        if not self.config.adaptive_clipping:
            return z
        sigma_b = self._count_stddev()
        try:
            return dpf.update_noise_multiplier(z, sigma_b)
        except ValueError as err:
            raise FederatedConfigError(
                f"DPConfig `clipped_count_stddev={sigma_b!r}` is too small for noise_multiplier={z!r} with "
                "adaptive_clipping: the count's noise must satisfy 2 * clipped_count_stddev > noise_multiplier. Raise "
                "clipped_count_stddev (default clients_per_round / 20), sample more clients per round, or lower z."
            ) from err

    def _rng(self) -> dpf.NoiseSource:
        if self.config.secure_mode:
            return SECURE  # stateless: nothing to save, replay or predict
        if self._generator is None:
            seed = self.config.seed if self.config.seed is not None else torch.initial_seed()
            collective = self._collective
            if collective is not None and collective.world_size > 1 and self.config.noise == "distributed":
                # each process's workers add their own shares of the noise: independent streams, not the same draws
                seed = mix_seed(int(seed) % (2**63), collective.rank, _RANK_STREAM)
            self._generator = torch.Generator().manual_seed(int(seed) % (2**63))
        return self._generator

    # -- the round ----------------------------------------------------------------------------------------------------
    @override
    def begin_round(self, global_tensors: Sequence[Tensor]) -> None:
        self._include = [is_float(t) for t in global_tensors]
        self._round_clip = self.clip_norm
        self._pending = None
        self._reports = {}
        self._count_sum = 0.0
        self._count = 0
        self._count_noised = False
        self._layout = [(t.shape, accumulation_dtype(t.dtype), t.device) for t in global_tensors]
        self.last_weights = {}
        self.inner.begin_round(global_tensors)

    def _clip(self, update: Sequence[Tensor]) -> tuple[list[Tensor], float]:
        include = self._include or [is_float(t) for t in update]
        clipped, norm = dpf.clip_by_global_norm(update, self._round_clip, include)
        return [t if keep else torch.zeros_like(t) for t, keep in zip(clipped, include)], norm

    @override
    def worker_update(self, worker_id: Hashable, update: list[Tensor], num_steps: int, lr: float) -> list[Tensor]:
        """At the worker: clip to ``C`` (and, with distributed noise, add this worker's share of the noise)."""
        update = self.inner.worker_update(worker_id, update, num_steps, lr)
        clipped, norm = self._clip(update)
        report = (1.0 if norm <= self._round_clip else 0.0) - 0.5
        if self.config.noise == "distributed":
            n = self._expected_clients()
            std = self._update_noise_multiplier() * self._round_clip / math.sqrt(n)
            clipped = dpf.add_gaussian_noise(clipped, std, self._rng(), self._include or None)
            if self.config.adaptive_clipping:
                report += dpf.gaussian_scalar(self._count_stddev() / math.sqrt(n), self._rng())
        self._reports[worker_id] = report
        return clipped

    def _expected_clients(self) -> int:
        if not self.clients_per_round:
            raise LightningFedError(
                "DPConfig(noise='distributed') splits the noise among the workers sampled per round, and that number "
                "is unknown: FederatedStrategy tells it through check_num_clients(); when using DPAggregator "
                "directly, pass clients_per_round=."
            )
        return self.clients_per_round

    def weight_for(self, weight: float) -> float:
        """The weight ``w_k`` a worker with ``weight`` samples gets in the noisy sum (1, or capped)."""
        if self.config.weighting == "capped":
            return dpf.capped_weight(weight, self.config.weight_cap)  # type: ignore[arg-type]
        return 1.0

    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        report = self._reports.pop(worker_id, None)
        if self.config.noise == "server":  # the trusted server clips again (a no-op for honest, clipped updates)
            update, norm = self._clip(update)
            if report is None:
                report = (1.0 if norm <= self._round_clip else 0.0) - 0.5
        elif report is None:
            raise LightningFedError(
                f"DPAggregator got the update of worker {worker_id!r} without its worker_update() (clipping and its "
                "share of the noise): with noise='distributed' every update must pass through worker_update first."
            )
        w = self.weight_for(weight)
        self.last_weights[worker_id] = w
        scaled = [t * w if w != 1.0 else t for t in update]
        if self.config.noise == "distributed":  # already noised at the worker: straight into the (secure) sum
            self.inner.accumulate(scaled, weight=1.0, worker_id=worker_id)
        else:
            if self._pending is not None:
                self.inner.accumulate(self._pending[0], weight=1.0, worker_id=self._pending[1])
            self._pending = (list(scaled), worker_id)  # held back: finalize adds the noise with it, once
        self._count_sum += report
        self._count += 1

    @property
    @override
    def num_contributions(self) -> int:
        return self.inner.num_contributions + (1 if self._pending is not None else 0)

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        if self._pending is not None:
            last, worker_id = self._pending
            self._pending = None
            if self.config.noise == "server":
                std = self._update_noise_multiplier() * self._round_clip
                last = dpf.add_gaussian_noise(last, std, self._rng(), self._include or None)
            self.inner.accumulate(last, weight=1.0, worker_id=worker_id)
        new = self.inner.finalize(global_tensors)  # raises if no worker contributed
        self.accountant.step(noise_multiplier=self._round_noise_multiplier(), sample_rate=self.sample_rate)
        self.rounds += 1
        if self.config.adaptive_clipping and self._count:
            noisy = self._count_sum
            if self.config.noise == "server" and not self._count_noised:
                noisy += dpf.gaussian_scalar(self._count_stddev(self._count), self._rng())
            unclipped = noisy / self._count + 0.5
            self.clip_norm = dpf.adaptive_clip_norm(
                self.clip_norm, unclipped, self.config.target_quantile, self.config.clip_learning_rate
            )
        return new

    # -- several processes ----------------------------------------------------------------------------------------
    @override
    def setup_processes(self, collective: Collective) -> None:
        self.inner.setup_processes(collective)
        self._collective = collective

    @override
    def sync_round(self, collective: Collective) -> None:
        """Combine the round over the processes, the noise added once.

        ``noise="server"``: every process draws the noise (so that the generators stay in step) and the first
        process holding an update adds it, before the inner aggregator adds up the processes' sums; the clipped
        count's noise (adaptive clipping) likewise comes from that process. With the same seed in every process the
        round equals the one-process round. ``noise="distributed"``: each worker already added its share in its own
        process (from that process's stream); only the sums are added up.
        """
        pending, self._pending = self._pending, None
        holder: int | None = None
        if self.config.noise == "server":
            holders = collective.all_gather_object(pending is not None)
            holder = holders.index(True) if any(holders) else None
            if holder is not None:
                std = self._update_noise_multiplier() * self._round_clip
                zeros = [torch.zeros(shape, dtype=d, device=v) for shape, d, v in self._layout]
                base = pending[0] if pending is not None else zeros
                noised = dpf.add_gaussian_noise(base, std, self._rng(), self._include or None)
                if pending is not None and collective.rank == holder:
                    pending = (noised, pending[1])
        if pending is not None:
            self.inner.accumulate(pending[0], weight=1.0, worker_id=pending[1])
        counts = torch.tensor([self._count_sum, float(self._count)], dtype=torch.float64)
        (counts,) = collective.all_reduce_sum([counts])
        self._count_sum, self._count = float(counts[0]), round(float(counts[1]))
        if self.config.adaptive_clipping and self.config.noise == "server" and self._count and holder is not None:
            draw = dpf.gaussian_scalar(self._count_stddev(self._count), self._rng())
            (picked,) = collective.all_reduce_sum([torch.tensor([draw if collective.rank == holder else 0.0])])
            self._count_sum += float(picked[0])
            self._count_noised = True
        weights = collective.all_gather_object(self.last_weights)
        self.last_weights = {w: v for part in weights for w, v in part.items()}
        self.inner.sync_round(collective)

    # -- privacy budget -----------------------------------------------------------------------------------------------
    def epsilon(self, delta: float | None = None) -> float:
        """The epsilon spent so far (Opacus' accountant), for ``delta`` (default: the config's)."""
        return self.accountant.epsilon(self.config.delta if delta is None else delta)

    @property
    def should_stop(self) -> bool:
        """Whether one more round would spend more than ``target_epsilon`` (never, without a target). With distributed
        noise the next round is assumed to lose as many workers as the worst round so far; if it loses more, epsilon
        can pass the target by that difference (the reported epsilon is always the one actually spent)."""
        if self.config.target_epsilon is None:
            return False
        next_eps = self.accountant.epsilon_after(
            self.config.delta, noise_multiplier=self._next_noise_multiplier(), sample_rate=self.sample_rate
        )
        return next_eps > self.config.target_epsilon

    def metrics(self) -> dict[str, float]:
        """What to log each round: epsilon (at the config's delta), the clip norm and the noise multiplier."""
        return {
            "dp/epsilon": self.epsilon(),
            "dp/clip_norm": self.clip_norm,
            "dp/noise_multiplier": float(self._noise_multiplier()),
        }

    # -- checkpoints --------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "accountant": self.accountant.state_dict(),
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "rounds": self.rounds,
            # secure_mode: nothing. Otherwise the seeded generator's state: whoever reads it can replay the noise
            "generator": self._generator.get_state() if self._generator is not None else None,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.inner.load_state_dict(state.get("inner", {}))
        self.accountant.load_state_dict(state["accountant"])
        self.clip_norm = float(state["clip_norm"])
        if state.get("noise_multiplier") is not None:
            self.noise_multiplier = float(state["noise_multiplier"])
        self.rounds = int(state.get("rounds", 0))
        if state.get("generator") is not None and not self.config.secure_mode:
            self._generator = torch.Generator()
            self._generator.set_state(state["generator"])

    @override
    def __repr__(self) -> str:
        if "config" not in vars(self):  # a constructor that raised (a traceback or debugger prints the object)
            return "DPAggregator(<not constructed>)"
        c = self.config
        return (
            f"DPAggregator({self.inner!r}, noise_multiplier={self.noise_multiplier}, clip_norm={self.clip_norm:.4g}, "
            f"noise={c.noise!r}, weighting={c.weighting!r}, adaptive_clipping={c.adaptive_clipping}, "
            f"accountant={c.accountant!r})"
        )


def _takes_the_sum_at_workers(aggregator: Aggregator) -> bool:
    """Whether ``aggregator`` (or one it wraps) is secure aggregation: the server only ever sees the masked sum."""
    return any(getattr(a, "name", None) == "secure" for a in aggregator_chain(aggregator))
