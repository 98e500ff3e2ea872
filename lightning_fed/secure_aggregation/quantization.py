"""Fixed point in the ring ``Z_(2^k)``, ``k`` in {32, 64}: clip, scale, round, wrap; and the way back.

A real vector ``x`` becomes ``q = round(clip(x, -c, c) * 2**f)``, an integer with ``|q| <= ceil(c * 2**f)``, stored as
its residue mod ``2**k`` in a torch ``int64`` tensor: for ``k = 64`` the int64 value itself (two's complement *is*
``Z_(2^64)``, and int64 addition wraps), for ``k = 32`` the value ``& (2**32 - 1)`` in ``[0, 2**32)``. A sum of ``n``
such vectors decodes exactly (centered lift: residues ``>= 2**(k-1)`` are negative) while
``n * ceil(c * 2**f) <= 2**(k-1) - 1``; :func:`check_overflow` raises when it cannot hold.

Rounding: ``"stochastic"`` rounds ``v`` up with probability ``v - floor(v)`` (unbiased: the expected sum is exact;
each coordinate errs by less than one step ``2**-f``), drawn from a seeded ``torch.Generator``; ``"nearest"`` rounds
half to even (deterministic; error at most half a step). The dequantized sum of ``n`` vectors is within
:func:`error_bound` of the clipped real sum, per coordinate.

Example:
    >>> import torch
    >>> q = quantize(torch.tensor([0.5, -1.25, 9.0]), clip=4.0, fractional_bits=2, bits=32, rounding="nearest")
    >>> q.tolist()  # 0.5 * 4, -1.25 * 4 mod 2**32, clipped 4.0 * 4
    [2, 4294967291, 16]
    >>> dequantize(ring_add(q, q, bits=32), fractional_bits=2, bits=32).tolist()
    [1.0, -2.5, 8.0]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError

MASK32 = (1 << 32) - 1


def ring_reduce_(x: Tensor, bits: int) -> Tensor:
    """Reduce an int64 tensor mod ``2**bits`` in place (nothing to do for 64 bits: int64 wraps)."""
    if bits == 32:
        x.bitwise_and_(MASK32)
    return x


def ring_add_(acc: Tensor, x: Tensor, bits: int) -> Tensor:
    """``acc += x`` in ``Z_(2^bits)``, in place."""
    return ring_reduce_(acc.add_(x), bits)


def ring_sub_(acc: Tensor, x: Tensor, bits: int) -> Tensor:
    """``acc -= x`` in ``Z_(2^bits)``, in place."""
    return ring_reduce_(acc.sub_(x), bits)


def ring_add(a: Tensor, b: Tensor, bits: int) -> Tensor:
    """``a + b`` in ``Z_(2^bits)``."""
    return ring_add_(a.clone(), b, bits)


def max_abs_quantized(clip: float, fractional_bits: int) -> int:
    """The largest ``|q|`` one worker's quantized coordinate can take: ``ceil(clip * 2**fractional_bits)``."""
    return math.ceil(float(clip) * 2**fractional_bits)


def check_overflow(num_workers: int, clip: float, fractional_bits: int, bits: int) -> None:
    """Raise :class:`FederatedConfigError` when the sum of ``num_workers`` quantized updates may wrap in ``bits``."""
    per_worker = max_abs_quantized(clip, fractional_bits)
    bound = num_workers * per_worker
    limit = 2 ** (bits - 1) - 1
    if bound > limit:
        raise FederatedConfigError(
            f"secure aggregation cannot sum {num_workers} workers' updates in bits={bits}: each coordinate of a "
            f"worker's weighted update is clipped to [-clip, clip] = [-{clip}, {clip}] and scaled by "
            f"2**fractional_bits = 2**{fractional_bits}, so the sum of {num_workers} workers can reach "
            f"{num_workers} * {per_worker} = {bound}, beyond the {bits}-bit signed range "
            f"(2**{bits - 1} - 1 = {limit}). Lower clip or fractional_bits, sample fewer workers per round, or use "
            "bits=64."
        )


def error_bound(num_workers: int, fractional_bits: int, rounding: str) -> float:
    """The largest per-coordinate error of a dequantized sum of ``num_workers`` updates (clipping aside)."""
    step = 2.0**-fractional_bits
    return num_workers * (step if rounding == "stochastic" else step / 2)


def quantize(
    x: Tensor,
    *,
    clip: float,
    fractional_bits: int,
    bits: int,
    rounding: str = "stochastic",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``x`` (any real dtype, any device) as int64 ring elements on the CPU, flattened (see the module docstring)."""
    v = x.detach().reshape(-1).to("cpu", torch.float64).clamp(-clip, clip) * 2.0**fractional_bits
    if rounding == "stochastic":
        low = torch.floor(v)
        u = torch.rand(v.shape, generator=generator, dtype=torch.float64)
        v = low + (u < v - low).to(torch.float64)
    elif rounding == "nearest":
        v = torch.round(v)
    else:
        raise FederatedConfigError(f"`rounding={rounding!r}` is not valid: choose 'stochastic' or 'nearest'.")
    return ring_reduce_(v.to(torch.int64), bits)


def count_clipped(x: Tensor, clip: float) -> int:
    """How many coordinates of ``x`` lie outside ``[-clip, clip]`` (and are clipped by :func:`quantize`)."""
    return int((x.detach().abs() > clip).sum())


def dequantize(s: Tensor, *, fractional_bits: int, bits: int) -> Tensor:
    """Ring elements (a sum of quantized vectors) back to float64, reading residues ``>= 2**(bits-1)`` as negative."""
    if bits == 32:
        s = s.to(torch.int64) & MASK32
        s = torch.where(s >= 2**31, s - 2**32, s)
    return s.to(torch.float64) / 2.0**fractional_bits
