"""Checks of ``federate``'s and ``FederatedDataModule``'s arguments: the workers' data-access policy, an empty
dataset, floating-point labels for a label partitioner.

Example:
    >>> import torch, lightning_fed as sy
    >>> w = sy.VirtualWorker(id="w-checks")
    >>> apply_policy([w], check_policy("strict")); w.policy.release_data
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Subset

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers.base import BaseWorker

if TYPE_CHECKING:
    from lightning_fed.privacy.policy import DataAccessPolicy


def check_policy(policy: Any) -> DataAccessPolicy | None:
    """``None`` (keep each worker's own policy) or the :class:`~lightning_fed.privacy.DataAccessPolicy` that
    ``policy`` names (``"strict"``, ``"open"``, or a policy); anything else raises an error naming `policy`. An open
    policy warns, once per process.

    Example:
        >>> check_policy(None) is None, check_policy("strict").release_data
        (True, False)
        >>> check_policy("private")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `policy='private'` is not valid: pass 'strict' (the default: ...
    """
    if policy is None:
        return None
    from lightning_fed.privacy.policy import resolve_policy  # as in workers.base: the privacy layer sits below

    return resolve_policy(policy, argument="policy")


def apply_policy(workers: Sequence[BaseWorker], policy: DataAccessPolicy | None) -> None:
    """Give each worker ``policy`` (a checked one, see :func:`check_policy`), unless it has it already (its labels
    and audit log then stay); ``None`` keeps each worker's own. Call it before the workers' data arrives: objects a
    worker holds when its policy is set count as private."""
    if policy is None:
        return
    for worker in workers:
        if worker.policy != policy:
            worker.set_policy(policy)


def check_not_empty(num_samples: int, name: str) -> None:
    """Raise an error naming the empty dataset ``name``, before a partitioner or torch fails on it.

    Example:
        >>> check_not_empty(0, "train_dataset")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `train_dataset` is empty (len(train_dataset) == 0): ...
    """
    if num_samples == 0:
        raise FederatedConfigError(
            f"`{name}` is empty (len({name}) == 0): there is nothing to split among the workers. Pass a dataset "
            "with at least one sample per worker; if it should have data, check where it loads from (its root "
            "folder, download, filters)."
        )


def float_labels_hint(dataset: Dataset) -> str:
    """Where ``dataset`` keeps labels that are floating point (which :func:`dataset_labels` does not read), as a
    sentence for an error message; ``""`` when it has none."""
    if isinstance(dataset, Subset):
        return float_labels_hint(dataset.dataset)
    candidates = [(f"`dataset.{name}`", getattr(dataset, name, None)) for name in ("targets", "labels")]
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        candidates.append((f"the TensorDataset's last tensor (tensors[{len(tensors) - 1}])", tensors[-1]))
    for where, values in candidates:
        if isinstance(values, torch.Tensor) and values.dim() == 1 and values.is_floating_point():
            dtype = str(values.dtype).removeprefix("torch.")
            return (
                f" The dataset has labels, but {where} has dtype {dtype} (floating point), and a label partitioner "
                "needs integer class ids: convert them (e.g. `targets.long()` when they are whole numbers) or pass "
                "`labels=` (one int class per sample)."
            )
    return ""
