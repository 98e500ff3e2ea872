"""Pure differential-privacy math on lists of tensors: clipping, Gaussian noise, adaptive clipping, DP-SGD.

No Lightning and no Opacus here. The per-sample functions follow Opacus' ``DPOptimizer`` step by step (the same
norms, the same clip factor ``C / (norm + 1e-6)`` capped at 1, the same ``torch.normal`` calls in the same order),
so with the same generator state they give the same gradients. Wherever they take a ``generator``, the stateless
:data:`~lightning_fed.privacy.dp.noise.SECURE` draws the noise from the OS's secret randomness instead
(``DPConfig(secure_mode=True)``).

Example:
    >>> import torch
    >>> clipped, norm = clip_by_global_norm([torch.tensor([3.0]), torch.tensor([4.0])], clip_norm=1.0)
    >>> norm, [round(float(t), 4) for t in clipped]
    (5.0, [0.6, 0.8])
    >>> adaptive_clip_norm(1.0, unclipped_fraction=0.5, target_quantile=0.5, learning_rate=0.2)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_fed.privacy.dp.noise import SecureNoise, secure_normal

#: A seeded ``torch.Generator`` (reproducible, its state saved in checkpoints) or the secure, stateless source.
NoiseSource = torch.Generator | SecureNoise

#: Opacus' guard in ``C / (norm + 1e-6)``: it also keeps a clipped norm at or below ``C`` despite rounding.
CLIP_EPSILON = 1e-6


def _included(tensors: Sequence[Tensor], include: Sequence[bool] | None) -> list[bool]:
    if include is None:
        return [True] * len(tensors)
    if len(include) != len(tensors):
        raise ValueError(f"`include` needs one flag per tensor: got {len(include)} flags for {len(tensors)} tensors")
    return [bool(i) for i in include]


def global_norm(tensors: Sequence[Tensor], include: Sequence[bool] | None = None) -> float:
    """The L2 norm of the included tensors flattened into one vector (computed in float64)."""
    flags = _included(tensors, include)
    total = sum(float(t.detach().to(torch.float64).pow(2).sum()) for t, keep in zip(tensors, flags) if keep)
    return math.sqrt(total)


def clip_factor(norm: float, clip_norm: float) -> float:
    """``min(1, C / (norm + 1e-6))``: the scale that brings an update of L2 norm ``norm`` within ``C``."""
    return min(1.0, clip_norm / (norm + CLIP_EPSILON))


def clip_by_global_norm(
    tensors: Sequence[Tensor], clip_norm: float, include: Sequence[bool] | None = None
) -> tuple[list[Tensor], float]:
    """Scale the included tensors together so their global L2 norm is at most ``clip_norm``.

    Returns the clipped tensors (the excluded ones unchanged) and the norm before clipping.
    """
    flags = _included(tensors, include)
    norm = global_norm(tensors, flags)
    factor = clip_factor(norm, clip_norm)
    return [t * factor if keep and factor < 1.0 else t for t, keep in zip(tensors, flags)], norm


def gaussian_noise_like(
    tensors: Sequence[Tensor],
    std: float,
    generator: NoiseSource | None = None,
    include: Sequence[bool] | None = None,
) -> list[Tensor]:
    """Independent ``N(0, std^2)`` noise shaped like each included tensor (zeros for the others).

    The noise is drawn on the generator's device and moved to each tensor's device, in its dtype.
    """
    flags = _included(tensors, include)
    device = generator.device if generator is not None else None
    out = []
    for t, keep in zip(tensors, flags):
        if not keep or std == 0:
            out.append(torch.zeros_like(t))
            continue
        if isinstance(generator, SecureNoise):
            noise = secure_normal(t.shape, std, t.dtype)
        else:
            noise = torch.normal(0.0, float(std), size=t.shape, generator=generator, dtype=t.dtype, device=device)
        out.append(noise.to(t.device))
    return out


def gaussian_scalar(std: float, generator: NoiseSource | None = None) -> float:
    """One ``N(0, std^2)`` draw as a float (the adaptive clipping count's noise)."""
    if isinstance(generator, SecureNoise):
        return float(secure_normal((1,), std)[0])
    return float(torch.normal(0.0, float(std), (1,), generator=generator))


def add_gaussian_noise(
    tensors: Sequence[Tensor],
    std: float,
    generator: NoiseSource | None = None,
    include: Sequence[bool] | None = None,
) -> list[Tensor]:
    """``tensor + N(0, std^2)`` for the included tensors (the others unchanged)."""
    noise = gaussian_noise_like(tensors, std, generator, include)
    return [t + n for t, n in zip(tensors, noise)]


# -- client level: adaptive clipping (Andrew et al. 2021) -------------------------------------------------------------
def adaptive_clip_norm(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """The geometric update ``C * exp(-eta * (b - gamma))`` of Andrew et al. 2021 (Algorithm 1).

    ``b`` is the (privatized) fraction of updates that were not clipped: above the target quantile ``gamma`` the bound
    shrinks, below it grows.
    """
    return float(clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile)))


def update_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """The update noise ``z_delta`` that, with the count's noise ``sigma_b`` (sensitivity 1/2), costs ``z`` overall.

    Andrew et al. 2021, Theorem 1: ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``; needs ``2 sigma_b > z``.
    """
    if noise_multiplier == 0:
        return 0.0
    remainder = noise_multiplier**-2 - (2.0 * clipped_count_stddev) ** -2
    if remainder <= 0:
        raise ValueError(
            f"clipped_count_stddev={clipped_count_stddev!r} is too small for noise_multiplier={noise_multiplier!r}: "
            f"adaptive clipping needs 2 * clipped_count_stddev > noise_multiplier"
        )
    return remainder**-0.5


def capped_weight(num_samples: float, weight_cap: float) -> float:
    """McMahan et al. 2018's bounded client weight ``min(n_k / weight_cap, 1)``."""
    return min(float(num_samples) / float(weight_cap), 1.0)


# -- sample level: DP-SGD on per-sample gradients (as Opacus' DPOptimizer) --------------------------------------------
def flat_grad_sample(grad_sample: Tensor | Sequence[Tensor]) -> Tensor:
    """One tensor of per-sample gradients (Opacus keeps a list when gradients were accumulated over batches)."""
    if isinstance(grad_sample, Tensor):
        return grad_sample
    return torch.cat(list(grad_sample), dim=0)


def per_sample_norms(grad_samples: Sequence[Tensor]) -> Tensor:
    """The L2 norm of each sample's gradient over all parameters (``grad_samples[i]`` is ``[batch, *param.shape]``)."""
    per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in grad_samples]
    device = per_param[0].device
    return torch.stack([n.to(device) for n in per_param], dim=1).norm(2, dim=1)


def per_sample_clip_factors(grad_samples: Sequence[Tensor], max_grad_norm: float) -> Tensor:
    """Opacus' per-sample factors ``min(1, C / (norm + 1e-6))`` (empty for an empty batch)."""
    if len(grad_samples[0]) == 0:
        return torch.zeros((0,), device=grad_samples[0].device)
    return (max_grad_norm / (per_sample_norms(grad_samples) + CLIP_EPSILON)).clamp(max=1.0)


def clip_and_sum_per_sample(
    grad_samples: Sequence[Tensor], max_grad_norm: float, dtypes: Sequence[torch.dtype]
) -> list[Tensor]:
    """The sum over the batch of the clipped per-sample gradients, one tensor per parameter (in ``dtypes``)."""
    factors = per_sample_clip_factors(grad_samples, max_grad_norm)
    out = []
    for g, dtype in zip(grad_samples, dtypes):
        g = g.to(dtype)
        out.append(torch.einsum("i,i...", factors.to(g.device).to(dtype), g))
    return out


def dp_sgd_gradients(
    grad_samples: Sequence[Tensor],
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int | None,
    dtypes: Sequence[torch.dtype] | None = None,
    generator: NoiseSource | None = None,
    accumulated_iterations: int = 1,
    loss_reduction: str = "mean",
) -> list[Tensor]:
    """The private gradient of one DP-SGD step, as Opacus' ``DPOptimizer.pre_step``: clip each sample's gradient to
    ``max_grad_norm``, sum, add ``N(0, (noise_multiplier * max_grad_norm)^2)`` per coordinate, and (``"mean"``) divide
    by ``expected_batch_size * accumulated_iterations`` (not the drawn batch size, which Poisson sampling makes
    random).

    Example:
        >>> import torch
        >>> g = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]  # two samples, one parameter of 2 coordinates
        >>> grads = dp_sgd_gradients(g, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=2)
        >>> [t.round(decimals=4) for t in grads]
        [tensor([0.4500, 0.6000])]
    """
    dtypes = list(dtypes) if dtypes is not None else [g.dtype for g in grad_samples]
    summed = clip_and_sum_per_sample(grad_samples, max_grad_norm, dtypes)
    return noisy_gradients(
        summed,
        max_grad_norm=max_grad_norm,
        noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size,
        generator=generator,
        accumulated_iterations=accumulated_iterations,
        loss_reduction=loss_reduction,
    )


def noisy_gradients(
    summed: Sequence[Tensor],
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int | None,
    generator: NoiseSource | None = None,
    accumulated_iterations: int = 1,
    loss_reduction: str = "mean",
) -> list[Tensor]:
    """The second half of :func:`dp_sgd_gradients`: noise the clipped sums (one ``torch.normal`` per tensor, in
    order, as Opacus) and divide by ``expected_batch_size * accumulated_iterations`` for ``"mean"``."""
    std = noise_multiplier * max_grad_norm
    out = []
    for s in summed:
        if std == 0:
            noise = torch.zeros(s.shape, device=s.device, dtype=s.dtype)
        elif isinstance(generator, SecureNoise):
            noise = secure_normal(s.shape, std, s.dtype, s.device)
        else:
            noise = torch.normal(0, std, size=s.shape, device=s.device, generator=generator, dtype=s.dtype)
        out.append(s + noise)
    if loss_reduction == "mean":
        if not expected_batch_size:
            raise ValueError("dp_sgd_gradients with loss_reduction='mean' needs expected_batch_size > 0")
        out = [t / (expected_batch_size * accumulated_iterations) for t in out]
    return out
