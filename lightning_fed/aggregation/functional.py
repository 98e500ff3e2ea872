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

import math
from collections.abc import Callable, Sequence

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
    return [x.to(accumulation_dtype(x.dtype)) - r.to(accumulation_dtype(r.dtype)) for x, r in zip(local, reference)]


def model_delta_(out: Sequence[Tensor], local: Sequence[Tensor], reference: Sequence[Tensor]) -> list[Tensor]:
    """:func:`model_delta` written into ``out`` (tensors in accumulation dtype, reused from worker to worker): the
    same values bit for bit, without allocating a model-sized float64 copy per worker (large allocations that the C
    allocator hands back to the OS and page-faults in again cost more than the arithmetic).

    Example:
        >>> import torch
        >>> out = zeros_like_sums([torch.zeros(2)])
        >>> model_delta_(out, [torch.tensor([1.5, 2.0])], [torch.tensor([0.5, 3.0])])
        [tensor([ 1., -1.], dtype=torch.float64)]
    """
    for o, x, r in zip(out, local, reference):
        o.copy_(x)
        o.sub_(r.to(o.dtype) if r.dtype == torch.bool else r)  # r is widened element by element: exact
    return list(out)


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every floating-point value of ``tensors`` is finite (no NaN or inf), with one device sync: one sum per
    tensor decides (a NaN or inf makes the sum non-finite); only a non-finite sum (which a huge finite tensor can also
    give) is checked value by value.

    Example:
        >>> import torch
        >>> all_finite([torch.ones(3), torch.arange(3)]), all_finite([torch.tensor([1.0, float("nan")])])
        (True, False)
        >>> all_finite([torch.full((4,), 3e38)])  # the sum overflows, the values are finite
        True
    """
    floating = [t for t in tensors if t.is_floating_point()]
    if not floating or bool(torch.isfinite(torch.stack([t.sum() for t in floating])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in floating)


def accumulate_(sums: list[Tensor], update: Sequence[Tensor], weight: float) -> None:
    """``sums += weight * update``, in place."""
    torch._foreach_add_(sums, [u.to(s.dtype) for s, u in zip(sums, update)], alpha=float(weight))


def is_float(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds real or complex values (not an integer buffer such as ``num_batches_tracked``)."""
    return tensor.dtype.is_floating_point or tensor.dtype.is_complex


def apply_update(reference: Sequence[Tensor], deltas: Sequence[Tensor]) -> list[Tensor]:
    """``reference + delta``, cast back to each reference tensor's dtype (integer buffers rounded)."""
    out = []
    for ref, delta in zip(reference, deltas):
        value = ref.to(delta.dtype) + delta
        out.append(value.to(ref.dtype) if is_float(ref) else value.round().to(ref.dtype))
    return out


def apply_mean_update(reference: Sequence[Tensor], sums: Sequence[Tensor], total_weight: float) -> list[Tensor]:
    """``reference + sums / total_weight``, cast back to each reference tensor's dtype (integers rounded)."""
    return apply_update(reference, mean_update(sums, total_weight))


def mean_update(sums: Sequence[Tensor], total_weight: float) -> list[Tensor]:
    """The division at the end: ``sums / total_weight`` (the weighted mean update, in accumulation dtype)."""
    if total_weight <= 0:
        raise ValueError(f"mean_update needs a positive total weight, got {total_weight!r}")
    return [s / total_weight for s in sums]


def weighted_mean(tensors: Sequence[Sequence[Tensor]], weights: Sequence[float]) -> list[Tensor]:
    """The weighted mean of several models (each a list of tensors), summed first and divided at the end."""
    if len(tensors) == 0 or len(tensors) != len(weights):
        raise ValueError(f"weighted_mean needs one weight per model, got {len(tensors)} models, {len(weights)} weights")
    sums = zeros_like_sums(tensors[0])
    for model, weight in zip(tensors, weights):
        accumulate_(sums, model, weight)
    total = float(sum(weights))
    return [s / total for s in sums]


# -- robust rules (not sums: each needs every update of the round) ---------------------------------------------------
def _check_models(updates: Sequence[Sequence[Tensor]], what: str) -> None:
    if len(updates) == 0:
        raise ValueError(f"{what} needs at least one update, got none")
    sizes = {len(u) for u in updates}
    if len(sizes) != 1:
        raise ValueError(f"{what} needs updates with the same number of tensors, got {sorted(sizes)}")


def coordinate_median(updates: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """The coordinate-wise median of several updates (Yin et al. 2018); for an even count, the mean of the two
    middle values (as ``numpy.median``).

    Example:
        >>> import torch
        >>> coordinate_median([[torch.tensor([1.0, 9.0])], [torch.tensor([2.0, 0.0])], [torch.tensor([100.0, 1.0])]])
        [tensor([2., 1.])]
    """
    _check_models(updates, "coordinate_median")
    out = []
    for tensors in zip(*updates):
        ordered = torch.stack(list(tensors)).sort(dim=0).values
        n = ordered.shape[0]
        out.append(ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2)
    return out


def trimmed_mean(updates: Sequence[Sequence[Tensor]], beta: float) -> list[Tensor]:
    """The coordinate-wise beta-trimmed mean (Yin et al. 2018): per coordinate, drop the ``floor(beta * n)`` largest
    and smallest values and average the rest (unweighted).

    Example:
        >>> import torch
        >>> trimmed_mean([[torch.tensor([v])] for v in (1.0, 2.0, 3.0, 4.0, 100.0)], beta=0.2)
        [tensor([3.])]
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean needs beta in [0, 0.5), got {beta!r}")
    _check_models(updates, "trimmed_mean")
    n = len(updates)
    k = math.floor(beta * n)
    return [torch.stack(list(tensors)).sort(dim=0).values[k : n - k].mean(dim=0) for tensors in zip(*updates)]


def flatten(update: Sequence[Tensor], include: Sequence[bool] | None = None) -> Tensor:
    """One float64 vector from an update's tensors (those with ``include[i]`` true, all when ``include`` is None)."""
    parts = [t.reshape(-1).to(torch.float64) for i, t in enumerate(update) if include is None or include[i]]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def krum_scores(vectors: Tensor, num_byzantine: int) -> Tensor:
    """Krum scores (Blanchard et al. 2017): for each row, the sum of squared distances to its ``n - f - 2`` nearest
    other rows. Needs ``n >= 2f + 3``.

    Example:
        >>> import torch
        >>> krum_scores(torch.tensor([[0.0], [1.0], [2.0], [3.0], [50.0]]), num_byzantine=1).tolist()
        [5.0, 2.0, 2.0, 5.0, 4513.0]
    """
    n = vectors.shape[0]
    if num_byzantine < 0 or n < 2 * num_byzantine + 3:
        raise ValueError(
            f"Krum needs n >= 2f + 3 updates: got n={n} for f={num_byzantine} (at least {2 * num_byzantine + 3})"
        )
    vectors = vectors.to(torch.float64)
    distances = torch.stack([(vectors - row).pow(2).sum(dim=1) for row in vectors])
    distances.fill_diagonal_(math.inf)  # a row is not its own neighbour
    nearest = distances.sort(dim=1).values[:, : n - num_byzantine - 2]
    return nearest.sum(dim=1)


def krum_select(
    updates: Sequence[Sequence[Tensor]],
    num_byzantine: int,
    num_selected: int = 1,
    include: Sequence[bool] | None = None,
) -> list[int]:
    """The positions of the ``num_selected`` updates with the lowest Krum scores (multi-Krum when > 1), best first;
    ties go to the earlier update. ``include`` picks which tensors count in the distances (e.g. not integer buffers).

    Example:
        >>> import torch
        >>> krum_select([[torch.tensor([v])] for v in (0.0, 1.0, 2.0, 3.0, 50.0)], num_byzantine=1, num_selected=3)
        [1, 2, 0]
    """
    _check_models(updates, "krum_select")
    if not 1 <= num_selected <= len(updates):
        raise ValueError(f"krum_select needs 1 <= num_selected <= {len(updates)}, got {num_selected!r}")
    scores = krum_scores(torch.stack([flatten(u, include) for u in updates]), num_byzantine)
    return [int(i) for i in torch.argsort(scores, stable=True)[:num_selected]]


# -- server optimizers on the pseudo-gradient (the mean update) -----------------------------------------------------
def server_momentum_step(momentum: Tensor | None, delta: Tensor, beta: float) -> Tensor:
    """FedAvgM's momentum (Hsu et al. 2019): ``v = beta * v + delta`` (``v = delta`` on the first round)."""
    return delta.clone() if momentum is None else momentum * beta + delta


def adagrad_second_moment(v: Tensor, delta_sq: Tensor, beta2: float) -> Tensor:
    """FedAdagrad: ``v + delta**2`` (``beta2`` unused)."""
    return v + delta_sq


def adam_second_moment(v: Tensor, delta_sq: Tensor, beta2: float) -> Tensor:
    """FedAdam: ``beta2 * v + (1 - beta2) * delta**2``."""
    return beta2 * v + (1 - beta2) * delta_sq


def yogi_second_moment(v: Tensor, delta_sq: Tensor, beta2: float) -> Tensor:
    """FedYogi: ``v - (1 - beta2) * delta**2 * sign(v - delta**2)``."""
    return v - (1 - beta2) * delta_sq * torch.sign(v - delta_sq)


def fedopt_step(
    delta: Tensor,
    m: Tensor,
    v: Tensor,
    second_moment: Callable[[Tensor, Tensor, float], Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One server step of Reddi et al. 2021, Algorithm 2, on one tensor: returns ``(step, m, v)`` with
    ``m = beta1 m + (1 - beta1) delta``, ``v = second_moment(v, delta**2, beta2)``, ``step = lr m / (sqrt(v) + tau)``
    (no bias correction, as in the paper); the new model is ``x + step``.

    Example:
        >>> import torch
        >>> step, m, v = fedopt_step(torch.tensor([2.0]), torch.zeros(1), torch.zeros(1), adagrad_second_moment,
        ...                          lr=1.0, beta1=0.0, beta2=0.0, tau=0.0)
        >>> step, m, v
        (tensor([1.]), tensor([2.]), tensor([4.]))
    """
    m = beta1 * m + (1 - beta1) * delta
    v = second_moment(v, delta * delta, beta2)
    return lr * m / (v.sqrt() + tau), m, v
