"""Pure aggregation math on lists of tensors (one entry per model tensor): no Lightning, no state.

Updates are deltas ``local - global``; sum-like aggregators add ``weight * update`` into running sums and divide by
the total weight at the end, so secure aggregation can take over the sum and DP can add noise to it.

Example:
    >>> import torch
    >>> sums = zeros_like_sums([torch.zeros(2)])
    >>> accumulate_(sums, [torch.tensor([1.0, 2.0])], weight=1.0)
    >>> accumulate_(sums, [torch.tensor([3.0, 6.0])], weight=3.0)
    >>> apply_mean_update([torch.zeros(2)], sums, total_weight=4.0)
    [tensor([2.5000, 5.0000])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype updates and their running sums are kept in: float64 (complex128 for complex tensors).

    In float64, ``global + (local - global)`` rounds back to ``local`` exactly, so FedAvg over one worker equals
    that worker's training bit for bit, and sums over many workers lose nothing a float32 model could hold.
    """
    return torch.complex128 if dtype.is_complex else torch.float64


def zeros_like_sums(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Zeroed running sums shaped like ``tensors``, in their accumulation dtype."""
    return [torch.zeros(t.shape, dtype=accumulation_dtype(t.dtype), device=t.device) for t in tensors]


def model_delta(local: Sequence[Tensor], reference: Sequence[Tensor]) -> list[Tensor]:
    """``local - reference`` per tensor, in accumulation dtype (integer buffers included)."""
    return [l.to(accumulation_dtype(l.dtype)) - r.to(accumulation_dtype(r.dtype)) for l, r in zip(local, reference)]


def accumulate_(sums: list[Tensor], update: Sequence[Tensor], weight: float) -> None:
    """``sums += weight * update``, in place."""
    torch._foreach_add_(sums, [u.to(s.dtype) for s, u in zip(sums, update)], alpha=float(weight))


def apply_mean_update(reference: Sequence[Tensor], sums: Sequence[Tensor], total_weight: float) -> list[Tensor]:
    """``reference + sums / total_weight``, cast back to each reference tensor's dtype (integers rounded)."""
    out = []
    for ref, s in zip(reference, sums):
        value = ref.to(s.dtype) + s / total_weight
        out.append(value.round().to(ref.dtype) if not ref.dtype.is_floating_point else value.to(ref.dtype))
    return out


def weighted_mean(tensors: Sequence[Sequence[Tensor]], weights: Sequence[float]) -> list[Tensor]:
    """The weighted mean of several models (each a list of tensors), summed first and divided at the end."""
    if len(tensors) == 0 or len(tensors) != len(weights):
        raise ValueError(f"weighted_mean needs one weight per model, got {len(tensors)} models, {len(weights)} weights")
    sums = zeros_like_sums(tensors[0])
    for model, weight in zip(tensors, weights):
        accumulate_(sums, model, weight)
    total = float(sum(weights))
    return [s / total for s in sums]
