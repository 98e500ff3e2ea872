"""Partitioners by name, and one entry point that calls any partitioner with the right arguments.

A partitioner is either *label-based* (its first parameter is named ``labels``, like :func:`dirichlet` and
:func:`shards`) and is called as ``fn(labels, num_workers, seed=seed, **kwargs)``, or *size-based* and is called as
``fn(num_samples, num_workers, seed=seed, **kwargs)``. ``seed`` is passed only if the callable accepts it.

Example:
    >>> from lightning_fed.data.partition import partition_dataset_indices
    >>> parts = partition_dataset_indices("shards", num_samples=8, num_workers=2, labels=[0, 0, 1, 1, 2, 2, 3, 3])
    >>> [len(p) for p in parts]
    [4, 4]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from lightning_fed.data.partition.functional import (
    _check_int,
    _check_workers,
    dirichlet,
    iid,
    quantity_skew,
    shards,
    validate_partition,
)
from lightning_fed.exceptions import FederatedConfigError

__all__ = ["PARTITIONERS", "Partitioner", "get_partitioner", "partition_dataset_indices", "register_partitioner"]

Partitioner = Callable[..., list[list[int]]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shards": shards,
    "quantity_skew": quantity_skew,
}


def register_partitioner(name: str, fn: Partitioner, *, override: bool = False) -> Partitioner:
    """Register ``fn`` under ``name`` (an error if the name is taken, unless ``override=True``); returns ``fn``.

    Example:
        >>> def halves(num_samples, num_workers, *, seed=0):
        ...     return [list(range(w, num_samples, num_workers)) for w in range(num_workers)]
        >>> _ = register_partitioner("doc_halves", halves)
        >>> get_partitioner("doc_halves") is halves
        True
        >>> del PARTITIONERS["doc_halves"]
    """
    if not isinstance(name, str) or not name:
        raise FederatedConfigError(f"`name={name!r}` is not valid: pass a non-empty string.")
    if not callable(fn):
        raise FederatedConfigError(f"`fn={fn!r}` is not callable: pass a function that returns a list of index lists.")
    if name in PARTITIONERS and not override:
        raise FederatedConfigError(
            f"`name={name!r}` is already registered (to {PARTITIONERS[name]!r}): pass `override=True` to replace it, "
            "or choose another name."
        )
    PARTITIONERS[name] = fn
    return fn


def get_partitioner(name_or_callable: str | Partitioner, argument: str = "partition") -> Partitioner:
    """The partitioner registered under a name; a callable is returned unchanged. ``argument`` is the caller's name
    for it, which an error names (and through it the CLI's flag).

    Example:
        >>> get_partitioner("iid").__name__
        'iid'
        >>> get_partitioner(len) is len
        True
    """
    if isinstance(name_or_callable, str):
        if name_or_callable not in PARTITIONERS:
            known = ", ".join(repr(k) for k in sorted(PARTITIONERS))
            raise FederatedConfigError(
                f"`{argument}={name_or_callable!r}` is not a known partitioner: known names are {known}. Pass one of "
                "these, a callable, or register a new one with `register_partitioner(name, fn)`."
            )
        return PARTITIONERS[name_or_callable]
    if callable(name_or_callable):
        return name_or_callable
    raise FederatedConfigError(
        f"`{argument}={name_or_callable!r}` is neither a registered name nor a callable: "
        "pass e.g. 'iid' or 'dirichlet', or a function."
    )


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return None


def is_label_based(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s first parameter is named ``labels``.

    Example:
        >>> is_label_based(get_partitioner("dirichlet")), is_label_based(get_partitioner("iid"))
        (True, False)
    """
    params = _parameters(fn)
    return bool(params) and params[0].name == "labels"


def _accepts_seed(fn: Callable[..., Any]) -> bool:
    params = _parameters(fn)
    if params is None:
        return True
    return any(p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def partition_dataset_indices(
    partitioner: str | Partitioner,
    *,
    num_samples: int,
    num_workers: int,
    labels: Any = None,
    seed: int = 0,
    **kwargs: Any,
) -> list[list[int]]:
    """Split ``range(num_samples)`` among ``num_workers`` with a partitioner given by name or as a callable, pass
    ``labels`` to label-based ones, and check the result with :func:`validate_partition`.

    Example:
        >>> parts = partition_dataset_indices("dirichlet", num_samples=6, num_workers=2, labels=[0, 1] * 3, alpha=1.0)
        >>> sorted(i for p in parts for i in p)
        [0, 1, 2, 3, 4, 5]
    """
    fn = get_partitioner(partitioner, argument="partitioner")
    name = partitioner if isinstance(partitioner, str) else getattr(fn, "__name__", repr(fn))
    _check_workers(_check_int("num_samples", num_samples, 0), num_workers)
    if labels is not None:
        num_labels = len(labels) if hasattr(labels, "__len__") and getattr(labels, "ndim", 1) > 0 else None
        if num_labels != num_samples:
            raise FederatedConfigError(
                f"`labels` has {num_labels!r} entries but `num_samples={num_samples!r}`: pass one label per sample."
            )
    if _accepts_seed(fn):
        kwargs["seed"] = seed
    if is_label_based(fn):
        if labels is None:
            raise FederatedConfigError(
                f"Partitioner {name!r} needs labels but `labels=None`: pass `labels=` (one int class per sample), "
                "or use a dataset with a `targets` attribute, or pick a partitioner that needs none, e.g. 'iid'."
            )
        result = fn(labels, num_workers, **kwargs)
    else:
        result = fn(num_samples, num_workers, **kwargs)
    validate_partition(result, num_samples, num_workers=num_workers)
    return [[int(i) for i in part] for part in result]
