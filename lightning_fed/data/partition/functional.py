"""Pure, seeded functions that split a dataset's indices among federated workers.

Every partitioner returns ``list[list[int]]``: one list of dataset indices per worker, in which every index in
``range(num_samples)`` appears exactly once. Randomness comes only from ``numpy.random.default_rng(seed)``, so the
same arguments always give the same partition. Each worker's indices are sorted ascending (the order a
``torch.utils.data.Subset`` then visits them in; shuffle in the worker's DataLoader if you need randomness).
Every partitioner requires ``1 <= num_workers <= num_samples``. Bad arguments raise
:class:`~lightning_fed.exceptions.FederatedConfigError`.

Example:
    >>> from lightning_fed.data.partition import dirichlet, label_histogram
    >>> labels = [0] * 50 + [1] * 50
    >>> parts = dirichlet(labels, num_workers=4, alpha=0.5, seed=1)
    >>> label_histogram(labels, parts).sum(axis=0).tolist()
    [50, 50]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_fed.exceptions import FederatedConfigError

__all__ = ["dirichlet", "iid", "label_histogram", "quantity_skew", "shards", "validate_partition"]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FederatedConfigError(f"`{name}={value!r}` is not valid: pass an integer >= {minimum}.")
    return int(value)


def _check_workers(num_samples: int, num_workers: int, min_size: int = 1, *, what: str = "num_samples") -> None:
    """``what`` names the argument that gave ``num_samples`` (``"labels"`` for a label partitioner)."""
    _check_int("num_workers", num_workers, 1)
    if num_samples == 0:
        given = "`labels` is empty (0 labels)" if what == "labels" else f"`{what}=0`"
        raise FederatedConfigError(
            f"{given}: the dataset to split is empty, so none of the {num_workers} worker(s) would get a sample. "
            "Pass a dataset with at least one sample per worker (check where it loads its data from)."
        )
    if num_workers > num_samples:
        raise FederatedConfigError(
            f"`num_workers={num_workers!r}` is more than the number of samples ({num_samples!r}): every worker needs "
            f"at least one sample; use at most {num_samples} workers or a larger dataset."
        )
    if min_size * num_workers > num_samples:
        raise FederatedConfigError(
            f"`min_size={min_size!r}` is impossible: {num_workers} workers x {min_size} samples > {num_samples} "
            f"samples; lower `min_size` to at most {num_samples // num_workers} or use fewer workers."
        )


def _as_labels(labels: Any) -> np.ndarray:
    """Labels (sequence, numpy array or torch tensor) as a 1-D int64 array of non-negative class ids."""
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # a torch tensor, without importing torch
        labels = labels.detach().cpu().numpy()
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise FederatedConfigError(f"`labels` could not be read as an array ({err}): pass a 1-D list of ints.") from err
    if arr.ndim != 1:
        raise FederatedConfigError(
            f"`labels` must be 1-D (one integer class per sample); got shape {arr.shape!r}. "
            "For one-hot or per-pixel labels pass one class per sample, e.g. `labels.argmax(1)`."
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise FederatedConfigError(
                f"`labels` must be integer class ids; got dtype {str(arr.dtype)!r} with labels[{i}]={arr[i].item()!r}, "
                "which is not a whole number. A label partitioner splits by class: map each class to 0..C-1 first "
                "(e.g. `numpy.unique(labels, return_inverse=True)[1]`), or use a partitioner without labels ('iid')."
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        first = arr[0].item() if arr.size else None
        raise FederatedConfigError(
            f"`labels` must be integer class ids; got dtype {str(arr.dtype)!r} (first value {first!r}). "
            "Map them to integers, e.g. `numpy.unique(labels, return_inverse=True)[1]`."
        )
    if arr.size and arr.min() < 0:
        i = int(np.argmin(arr))
        raise FederatedConfigError(
            f"`labels` must be non-negative class ids; got labels[{i}]={int(arr[i])!r}. Map them to 0..C-1 first."
        )
    return arr.astype(np.int64, copy=False)


def _to_lists(parts: Sequence[np.ndarray]) -> list[list[int]]:
    return [np.sort(np.asarray(p, dtype=np.int64)).tolist() for p in parts]


def iid(num_samples: int, num_workers: int, *, seed: int = 0) -> list[list[int]]:
    """Shuffle ``range(num_samples)`` and cut it into ``num_workers`` parts whose sizes differ by at most one.

    Example:
        >>> parts = iid(10, 3, seed=0)
        >>> [len(p) for p in parts]
        [4, 3, 3]
        >>> sorted(i for p in parts for i in p) == list(range(10))
        True
    """
    num_samples = _check_int("num_samples", num_samples, 0)
    _check_workers(num_samples, num_workers)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    return _to_lists(np.array_split(rng.permutation(num_samples), num_workers))


def dirichlet(
    labels: Any, num_workers: int, alpha: float, *, min_size: int = 1, seed: int = 0, max_retries: int = 100
) -> list[list[int]]:
    """Label-skewed split (Hsu et al. 2019; Yurochkin et al. 2019): each class is divided among workers in
    proportions drawn from ``Dir(alpha)``. Small ``alpha`` (0.1) gives each worker few classes; large (1000) is
    near-IID. Draws again until every worker has ``min_size`` samples, at most ``max_retries`` times.

    Example:
        >>> parts = dirichlet([0, 1, 2, 3] * 25, num_workers=4, alpha=100.0, seed=0)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
        (100, True)
    """
    y = _as_labels(labels)
    min_size = _check_int("min_size", min_size, 0)
    _check_workers(len(y), num_workers, min_size, what="labels")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not 0 < alpha < math.inf:
        raise FederatedConfigError(
            f"`alpha={alpha!r}` is not valid: the Dirichlet concentration must be a finite number > 0 "
            "(e.g. 0.1 for strong label skew, 1000 for near-IID)."
        )
    max_retries = _check_int("max_retries", max_retries, 1)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    _, counts = np.unique(y, return_counts=True)
    groups = np.split(np.argsort(y, kind="stable"), np.cumsum(counts)[:-1])
    best = 0
    for _ in range(max_retries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
        for group in groups:
            proportions = rng.dirichlet(np.full(num_workers, float(alpha)))
            cuts = np.clip((np.cumsum(proportions)[:-1] * len(group)).astype(np.int64), 0, len(group))
            for worker, chunk in enumerate(np.split(rng.permutation(group), cuts)):
                parts[worker].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        if min(sizes) >= min_size:
            return _to_lists([np.concatenate(p) for p in parts])
        best = max(best, min(sizes))
    raise FederatedConfigError(
        f"dirichlet: no draw in `max_retries={max_retries!r}` gave every worker at least `min_size={min_size!r}` "
        f"samples (the best draw's smallest worker had {best}). Raise `alpha` (given {alpha!r}) for more even "
        f"splits, lower `min_size`, use fewer than `num_workers={num_workers!r}` workers, or raise `max_retries`."
    )


def shards(labels: Any, num_workers: int, shards_per_worker: int = 2, *, seed: int = 0) -> list[list[int]]:
    """Pathological non-IID split of McMahan et al. 2017: sort indices by label (stable), cut them into
    ``num_workers * shards_per_worker`` equal shards and deal ``shards_per_worker`` random shards to each worker.
    E.g. 60000 MNIST labels, 100 workers x 2 shards of 300 samples.

    Example:
        >>> parts = shards([0, 0, 1, 1, 2, 2, 3, 3], num_workers=2, shards_per_worker=2, seed=0)
        >>> [len(p) for p in parts]
        [4, 4]
    """
    y = _as_labels(labels)
    n = len(y)
    _check_workers(n, num_workers, what="labels")
    shards_per_worker = _check_int("shards_per_worker", shards_per_worker, 1)
    num_shards = num_workers * shards_per_worker
    if n % num_shards:
        raise FederatedConfigError(
            f"shards: `labels` has {n!r} samples, which cannot be cut into `num_workers * shards_per_worker = "
            f"{num_workers!r} * {shards_per_worker!r} = {num_shards}` equal shards. Choose `num_workers` and "
            f"`shards_per_worker` whose product divides {n}, or subset the data to {n - n % num_shards} samples."
        )
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    pieces = np.split(np.argsort(y, kind="stable"), num_shards)
    dealt = rng.permutation(num_shards).reshape(num_workers, shards_per_worker)
    return _to_lists([np.concatenate([pieces[s] for s in row]) for row in dealt])


def quantity_skew(
    num_samples: int,
    num_workers: int,
    *,
    seed: int = 0,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    power: float = 1.5,
    min_size: int = 1,
) -> list[list[int]]:
    """Split with skewed worker sizes: weights from a lognormal (``sigma``) or a Pareto power law
    (``distribution="powerlaw"``, tail exponent ``power``) are scaled so that sizes sum to ``num_samples`` with
    each worker >= ``min_size``; a random permutation is then cut at those sizes.

    Example:
        >>> parts = quantity_skew(100, 4, sigma=2.0, min_size=5, seed=0)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 5
        (100, True)
    """
    num_samples = _check_int("num_samples", num_samples, 0)
    min_size = _check_int("min_size", min_size, 0)
    _check_workers(num_samples, num_workers, min_size)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    if distribution == "lognormal":
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)) or not 0 <= sigma < math.inf:
            raise FederatedConfigError(f"`sigma={sigma!r}` is not valid: pass a finite number >= 0 (e.g. 1.0).")
        log_weights = float(sigma) * rng.standard_normal(num_workers)  # log of lognormal(0, sigma)
    elif distribution == "powerlaw":
        if isinstance(power, bool) or not isinstance(power, (int, float, np.number)) or not 0 < power < math.inf:
            raise FederatedConfigError(f"`power={power!r}` is not valid: pass a finite number > 0 (e.g. 1.5).")
        log_weights = rng.standard_exponential(num_workers) / float(power)  # log of Pareto(x_m=1, power)
    else:
        raise FederatedConfigError(
            f"`distribution={distribution!r}` is not valid: "
            "pass 'lognormal' (with `sigma`) or 'powerlaw' (with `power`)."
        )
    spare = num_samples - min_size * num_workers
    weights = np.exp(log_weights - log_weights.max())  # in log space: no overflow for large sigma / small power
    share = weights / weights.sum() * spare
    extra = np.floor(share).astype(np.int64)
    # Largest-remainder rounding; ties go to the lower worker index (stable sort), so the result is deterministic.
    extra[np.argsort(-(share - extra), kind="stable")[: spare - int(extra.sum())]] += 1
    sizes = extra + min_size
    return _to_lists(np.split(rng.permutation(num_samples), np.cumsum(sizes)[:-1]))


def label_histogram(labels: Any, partition: Sequence[Sequence[int]], num_classes: int | None = None) -> np.ndarray:
    """Count each class at each worker: an int64 array of shape ``(len(partition), num_classes)``.

    ``num_classes`` defaults to ``max(labels) + 1``.

    Example:
        >>> label_histogram([0, 1, 1, 2], [[0, 1], [2, 3]]).tolist()
        [[1, 1, 0], [0, 1, 1]]
    """
    y = _as_labels(labels)
    top = int(y.max()) + 1 if y.size else 0
    num_classes = top if num_classes is None else _check_int("num_classes", num_classes, top)
    hist = np.zeros((len(partition), num_classes), dtype=np.int64)
    for worker, indices in enumerate(partition):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise FederatedConfigError(
                f"`partition[{worker}]` holds an index out of range for {len(y)} labels: "
                "pass a partition of this dataset."
            )
        hist[worker] = np.bincount(y[idx], minlength=num_classes)
    return hist


def validate_partition(partition: Sequence[Sequence[int]], num_samples: int, *, num_workers: int | None = None) -> None:
    """Raise :class:`FederatedConfigError` unless every index in ``range(num_samples)`` is in exactly one worker's
    list (and, if given, there are ``num_workers`` lists). For checking user-supplied partitioners.

    Example:
        >>> validate_partition([[0, 2], [1]], 3)
        >>> validate_partition([[0, 1], [1]], 3)
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: partition: index 1 is in both worker 0 and worker 1; ...
    """
    num_samples = _check_int("num_samples", num_samples, 0)
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence):
        raise FederatedConfigError(f"partition must be a list of index lists (one per worker); got {partition!r}.")
    if num_workers is not None and len(partition) != num_workers:
        raise FederatedConfigError(
            f"partition has {len(partition)} worker lists but `num_workers={num_workers!r}`: "
            "return one list per worker."
        )
    owner = np.full(num_samples, -1, dtype=np.int64)
    for worker, indices in enumerate(partition):
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise FederatedConfigError(
                f"partition: worker {worker}'s entry must be a 1-D list of integer indices; got {indices!r}."
            )
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= num_samples)]
        if bad.size:
            raise FederatedConfigError(
                f"partition: worker {worker} has index {int(bad[0])!r}, out of range for "
                f"`num_samples={num_samples!r}`; indices must lie in range(num_samples)."
            )
        uniq, counts = np.unique(idx, return_counts=True)
        if uniq.size < idx.size:
            dup = int(uniq[counts > 1][0])
            raise FederatedConfigError(f"partition: index {dup} appears twice in worker {worker}; each index once.")
        taken = owner[uniq] >= 0
        if taken.any():
            dup = int(uniq[taken][0])
            raise FederatedConfigError(
                f"partition: index {dup} is in both worker {int(owner[dup])} and worker {worker}; "
                "each index must go to exactly one worker."
            )
        owner[uniq] = worker
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        raise FederatedConfigError(
            f"partition: {missing.size} of {num_samples} indices are assigned to no worker (first: {int(missing[0])}); "
            "every index in range(num_samples) must go to exactly one worker."
        )
