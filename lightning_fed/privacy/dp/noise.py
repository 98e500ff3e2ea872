"""Gaussian noise from a cryptographically secure source, for ``DPConfig(secure_mode=True)``.

:data:`SECURE` stands where a ``torch.Generator`` would (:func:`~lightning_fed.privacy.dp.functional.
gaussian_noise_like`, :func:`~lightning_fed.privacy.dp.functional.noisy_gradients`,
:func:`~lightning_fed.privacy.dp.functional.gaussian_scalar`). Each draw takes a fresh 32-byte key from
``os.urandom`` and expands it with ChaCha20 (:func:`~lightning_fed.secure_aggregation.prg.prg_ring`) into 53-bit
uniforms. Box-Muller turns each pair of uniforms into two standard normals, in float64. The normals are then scaled
and cast to the tensor's dtype. There is no state to save: a checkpoint cannot replay the noise, and no seed
(``seed_everything``, ``torch.initial_seed()``) predicts it. The cost is a CPU keystream and a copy to the
tensor's device.

The normals' tails stop at ``sqrt(2 * 53 * ln 2) ~ 8.6`` standard deviations (the smallest uniform is ``2**-53``),
as with any float64 sampler.

Example:
    >>> a, b = secure_normal((3,), std=2.0), secure_normal((3,), std=2.0)
    >>> a.shape, a.dtype, bool((a != b).all())  # two draws never repeat
    (torch.Size([3]), torch.float64, True)
    >>> SECURE
    SecureNoise()
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

_MANTISSA = 53  # float64 holds every integer below 2**53 exactly: uniforms k / 2**53, k in [0, 2**53)


class SecureNoise:
    """A stateless stand-in for a ``torch.Generator``: noise drawn with it comes from :func:`secure_normal`."""

    device = torch.device("cpu")  # where the draws are made (then moved to each tensor's device)

    def __repr__(self) -> str:
        return "SecureNoise()"


#: The one instance the DP aggregators hand out with ``secure_mode=True`` (it holds nothing).
SECURE = SecureNoise()


def secure_uniform(count: int) -> Tensor:
    """``count`` float64 uniforms on ``[0, 1)``: multiples of ``2**-53`` from a fresh ``os.urandom`` ChaCha20 key."""
    from lightning_fed.secure_aggregation.prg import SEED_BYTES, prg_ring  # the package loads on first use

    if count <= 0:
        return torch.zeros(0, dtype=torch.float64)
    words = prg_ring(os.urandom(SEED_BYTES), count, bits=64)
    top = (words >> (64 - _MANTISSA)) & ((1 << _MANTISSA) - 1)  # the 53 high bits (>> is arithmetic on int64)
    return top.to(torch.float64).mul_(2.0**-_MANTISSA)


def standard_normal(count: int) -> Tensor:
    """``count`` independent float64 ``N(0, 1)`` draws by Box-Muller on :func:`secure_uniform`."""
    pairs = (count + 1) // 2
    u = secure_uniform(2 * pairs)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:pairs]))  # 1 - u is in (0, 1]: the log is finite
    angle = u[pairs:].mul_(2.0 * math.pi)
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]


def secure_normal(
    shape: Sequence[int] | torch.Size,
    std: float,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """``N(0, std^2)`` noise of ``shape``, drawn in float64 from the OS's secret randomness, then cast to ``dtype``."""
    shape = torch.Size(shape)
    noise = standard_normal(shape.numel()).mul_(float(std)).reshape(shape)
    return noise.to(dtype=dtype, device=device)
