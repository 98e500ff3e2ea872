"""``DPConfig``: one switch for differential privacy, client level (DP-FedAvg) or sample level (DP-SGD).

Every setting is checked when the config is built; a bad one raises
:class:`~lightning_fed.exceptions.FederatedConfigError` naming the argument, its value and the fix. Building a
config needs no Opacus; the parts that account or compute per-sample gradients ask for it when they start
(:func:`~lightning_fed.privacy.dp.accountant.require_opacus`).

Example:
    >>> cfg = DPConfig(level="client", noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
    >>> cfg.level, cfg.clip_norm, cfg.noise, cfg.weighting
    ('client', 0.5, 'server', 'uniform')
    >>> DPConfig(level="sample", noise_multiplier=1.1, max_grad_norm=1.0).clip_norm  # max_grad_norm is an alias
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from lightning_fed.exceptions import FederatedConfigError

LEVELS = ("client", "sample")
ACCOUNTANTS = ("rdp", "prv")
NOISE_PLACEMENTS = ("server", "distributed")
WEIGHTINGS = ("uniform", "capped")
LOSS_REDUCTIONS = ("mean", "sum")
GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks")


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _choice(arg: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FederatedConfigError(f"DPConfig `{arg}={value!r}` is not valid: choose one of {list(choices)}.")


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy settings (see the module docstring).

    Args:
        level: ``"client"`` (DP-FedAvg, McMahan et al. 2018: each worker's whole update is clipped and the sum noised;
            protects a worker's entire dataset) or ``"sample"`` (DP-SGD at each worker, Abadi et al. 2016, with
            Opacus' per-sample gradients; protects each sample of a worker's dataset).
        noise_multiplier: ``z``: the Gaussian noise's standard deviation is ``z * clip_norm``. ``None`` with
            ``target_epsilon`` and ``num_rounds``: calibrated before training (Opacus' ``get_noise_multiplier``).
        clip_norm: ``C``: the L2 bound of each worker update (client level) or per-sample gradient (sample level);
            the initial bound with ``adaptive_clipping``.
        max_grad_norm: Opacus' name for ``clip_norm`` (either may be given; both must agree).
        delta: the ``delta`` of (epsilon, delta)-DP; epsilon is reported for it. Usually below ``1 / N``.
        target_epsilon: with ``noise_multiplier``: training stops before epsilon would pass it; without: the noise
            multiplier is calibrated so that ``num_rounds`` rounds spend it.
        num_rounds: the planned number of rounds (``max_epochs``), needed only to calibrate the noise multiplier.
        accountant: ``"rdp"`` or ``"prv"`` (Opacus' accountants).
        noise: client level: ``"server"`` (the trusted server noises the sum) or ``"distributed"`` (each of the
            ``n`` sampled workers adds ``N(0, (z C)^2 / n)`` to its clipped update, so the sum carries the full noise
            and no party sees an un-noised sum: the setting to compose with secure aggregation). A round where only
            ``k < n`` contribute (dropouts) carries ``z sqrt(k / n)``, and is accounted so.
        weighting: client level: ``"uniform"`` (every update weight 1: the sum's sensitivity is ``C``) or
            ``"capped"`` (weight ``min(n_k / weight_cap, 1)``, McMahan et al. 2018's bounded weights; sensitivity
            still ``C``). The noisy weighted sum is divided by the number of contributions, never by sample counts.
        weight_cap: the ``weight_cap`` of ``weighting="capped"`` (samples at which a worker gets full weight).
        adaptive_clipping: client level: the clip norm follows ``target_quantile`` of the update norms (Andrew et
            al. 2021), from a privatized count of unclipped updates. Refused with secure aggregation (each worker's
            report would reach the server outside the masked sum).
        target_quantile: the fraction of updates adaptive clipping aims to leave unclipped, in (0, 1).
        clip_learning_rate: the geometric step ``eta`` of adaptive clipping: ``C *= exp(-eta (b - target))``.
        clipped_count_stddev: the noise on the unclipped count (``None``: ``clients_per_round / 20``, as Andrew et
            al.); the update noise then is ``(z^-2 - (2 sigma_b)^-2)^-1/2`` so that the round costs ``z`` overall.
        poisson_sampling: sample level: draw each worker's batches by Poisson sampling (rate ``batch_size / shard
            size``), which the accountants assume.
        loss_reduction: sample level: how your loss reduces over the batch (``"mean"`` or ``"sum"``).
        grad_sample_mode: sample level: how per-sample gradients are clipped. ``"ghost"``: per-sample norms and the
            clipped sum from each layer's inputs and output gradients, no per-sample gradients kept
            (:mod:`~lightning_fed.privacy.dp.ghost`; Linear and Conv2d layers only); ``"hooks"``: Opacus'
            per-sample gradients (``p.grad_sample``), any layer Opacus supports; ``"auto"`` (default): ``"ghost"``
            when every layer with trainable parameters is a Linear or a Conv2d, else ``"hooks"``. Both give the
            same step up to float rounding (same clip factors, noise and accounting). With ``"ghost"`` the
            non-private gradients are never formed: ``p.grad`` stays ``None`` between ``backward()`` and the step.
        seed: seeds the noise (``None``: ``torch.initial_seed()``, so ``seed_everything`` drives it). Seeded
            pseudo-random noise suits research and simulation, not deployment: see ``secure_mode``.
        secure_mode: Opacus' name and meaning. ``False`` (default): the noise comes from a ``torch.Generator``
            seeded as above, and its state is saved in every checkpoint (``federated.aggregator``) so that a resumed
            run is bit-identical. **Whoever reads such a checkpoint can regenerate the next round's noise and, with
            the next model, subtract it: the DP guarantee is void against anyone holding the checkpoints (or the
            seed). Do not share them.** ``True`` (for deployment): every draw (the update noise, server-side or
            distributed, the clipped count's noise, DP-SGD's noise) comes from the OS (``os.urandom`` keys
            expanded by ChaCha20, Box-Muller in float64, :mod:`~lightning_fed.privacy.dp.noise`); nothing of it is
            saved, so a resumed run continues with fresh noise (the accountant and epsilon resume exactly, the model
            is not bit-identical to an uninterrupted run). Cannot be combined with ``seed``.

    Example:
        >>> DPConfig(noise_multiplier=1.0, clip_norm=1.0, secure_mode=True).secure_mode
        True
    """

    level: str = "client"
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    max_grad_norm: float | None = None
    delta: float = 1e-5
    target_epsilon: float | None = None
    num_rounds: int | None = None
    accountant: str = "rdp"
    noise: str = "server"
    weighting: str = "uniform"
    weight_cap: float | None = None
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    poisson_sampling: bool = True
    loss_reduction: str = "mean"
    grad_sample_mode: str = "auto"
    seed: int | None = None
    secure_mode: bool = False

    def __post_init__(self) -> None:
        _choice("level", self.level, LEVELS)
        _choice("accountant", self.accountant, ACCOUNTANTS)
        _choice("noise", self.noise, NOISE_PLACEMENTS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        _choice("grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        self._check_clip_norm()
        self._check_noise()
        if not (_number(self.delta) and 0.0 < self.delta < 1.0):
            raise FederatedConfigError(
                f"DPConfig `delta={self.delta!r}` is not valid: pass a probability in (0, 1), usually below 1 / the "
                "number of records protected (workers at client level, samples at sample level), e.g. 1e-5."
            )
        self._check_level_options()
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise FederatedConfigError(f"DPConfig `seed={self.seed!r}` is not valid: pass an integer >= 0 or None.")
        if not isinstance(self.secure_mode, bool):
            raise FederatedConfigError(
                f"DPConfig `secure_mode={self.secure_mode!r}` is not valid: pass True (noise from the OS, for "
                "deployment) or False (seeded, reproducible noise)."
            )
        if self.secure_mode and self.seed is not None:
            raise FederatedConfigError(
                f"DPConfig `seed={self.seed!r}` and `secure_mode=True` contradict each other: secure mode draws the "
                "noise from the OS so that nobody can predict or replay it, and a seed would make it predictable. "
                "Drop seed= (deployment), or set secure_mode=False (research, reproducible runs)."
            )

    def _check_clip_norm(self) -> None:
        clip, alias = self.clip_norm, self.max_grad_norm
        if clip is not None and alias is not None and clip != alias:
            raise FederatedConfigError(
                f"DPConfig got `clip_norm={clip!r}` and `max_grad_norm={alias!r}`: they name the same bound, pass one."
            )
        value = clip if clip is not None else alias
        if value is None:
            raise FederatedConfigError(
                "DPConfig needs a clipping bound: pass `clip_norm=` (or its Opacus name `max_grad_norm=`), e.g. 1.0."
            )
        if not (_number(value) and value > 0):
            name = "clip_norm" if clip is not None else "max_grad_norm"
            raise FederatedConfigError(f"DPConfig `{name}={value!r}` is not valid: pass a number > 0, e.g. 1.0.")
        object.__setattr__(self, "clip_norm", float(value))
        object.__setattr__(self, "max_grad_norm", float(value))

    def _check_noise(self) -> None:
        z, eps, rounds = self.noise_multiplier, self.target_epsilon, self.num_rounds
        if z is not None and not (_number(z) and z >= 0):
            raise FederatedConfigError(f"DPConfig `noise_multiplier={z!r}` is not valid: pass a number >= 0, e.g. 1.0.")
        if eps is not None and not (_number(eps) and eps > 0):
            raise FederatedConfigError(f"DPConfig `target_epsilon={eps!r}` is not valid: pass a number > 0, or None.")
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise FederatedConfigError(f"DPConfig `num_rounds={rounds!r}` is not valid: pass an integer >= 1.")
        if z is None and eps is None:
            raise FederatedConfigError(
                "DPConfig needs `noise_multiplier=` (e.g. 1.0), or `target_epsilon=` with `num_rounds=` to calibrate "
                "it."
            )
        if z is None and rounds is None:
            raise FederatedConfigError(
                f"DPConfig `target_epsilon={eps!r}` without `noise_multiplier` calibrates the noise for a planned "
                "run: pass `num_rounds=` (your max_epochs), or pass `noise_multiplier=` to stop when epsilon is "
                "reached."
            )
        if z == 0 and eps is not None:
            raise FederatedConfigError(
                f"DPConfig `noise_multiplier=0` spends an infinite epsilon: it cannot meet `target_epsilon={eps!r}`. "
                "Pass a positive noise_multiplier or leave it out to calibrate it."
            )
        if z is not None:
            object.__setattr__(self, "noise_multiplier", float(z))

    def _check_level_options(self) -> None:
        if self.level == "sample":
            for name, default in (("noise", "server"), ("weighting", "uniform"), ("adaptive_clipping", False)):
                value = getattr(self, name)
                if value != default:
                    raise FederatedConfigError(
                        f"DPConfig `{name}={value!r}` is a client-level option and `level='sample'` was chosen: use "
                        f"level='client', or leave {name} at {default!r}."
                    )
        elif self.grad_sample_mode != "auto":
            raise FederatedConfigError(
                f"DPConfig `grad_sample_mode={self.grad_sample_mode!r}` is a sample-level option (per-sample "
                "gradients) and `level='client'` was chosen: use level='sample', or leave grad_sample_mode at 'auto'."
            )
        if self.weighting == "capped":
            if not (_number(self.weight_cap) and self.weight_cap > 0):  # type: ignore[operator]
                raise FederatedConfigError(
                    f"DPConfig `weight_cap={self.weight_cap!r}` is not valid with weighting='capped': pass the number "
                    "of samples at which a worker gets full weight (> 0), e.g. the median shard size."
                )
            if self.noise == "distributed":
                raise FederatedConfigError(
                    "DPConfig `weighting='capped'` cannot be used with `noise='distributed'`: a worker adds its noise "
                    "before the server knows its weight, and scaling it afterwards would shrink the noise. Use "
                    "weighting='uniform' with distributed noise, or noise='server'."
                )
        elif self.weight_cap is not None:
            raise FederatedConfigError(
                f"DPConfig `weight_cap={self.weight_cap!r}` only applies to `weighting='capped'`, got "
                f"weighting={self.weighting!r}: set weighting='capped' or drop weight_cap."
            )
        if not (_number(self.target_quantile) and 0.0 < self.target_quantile < 1.0):
            raise FederatedConfigError(
                f"DPConfig `target_quantile={self.target_quantile!r}` is not valid: pass a fraction in (0, 1), "
                "e.g. 0.5."
            )
        if not (_number(self.clip_learning_rate) and self.clip_learning_rate > 0):
            raise FederatedConfigError(
                f"DPConfig `clip_learning_rate={self.clip_learning_rate!r}` is not valid: pass a number > 0, e.g. 0.2."
            )
        sigma_b = self.clipped_count_stddev
        if sigma_b is not None and not (_number(sigma_b) and sigma_b > 0):
            raise FederatedConfigError(
                f"DPConfig `clipped_count_stddev={sigma_b!r}` is not valid: pass a number > 0, or None for "
                "clients_per_round / 20."
            )

    def replace(self, **changes: Any) -> DPConfig:
        """A copy with ``changes`` (checked again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if "clip_norm" in changes or "max_grad_norm" in changes:
            values.pop("clip_norm")
            values.pop("max_grad_norm")
        values.update(changes)
        return DPConfig(**values)
