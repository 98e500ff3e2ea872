"""Seeded partitioning of a dataset's indices among federated workers (IID, Dirichlet label skew, shards, quantity
skew), a name registry, and one entry point, :func:`partition_dataset_indices`.

Example:
    >>> from lightning_fed.data.partition import iid, validate_partition
    >>> parts = iid(7, 2, seed=0)
    >>> validate_partition(parts, 7)
    >>> [len(p) for p in parts]
    [4, 3]
"""

from lightning_fed.data.partition.functional import (
    dirichlet,
    iid,
    label_histogram,
    quantity_skew,
    shards,
    validate_partition,
)
from lightning_fed.data.partition.registry import (
    PARTITIONERS,
    Partitioner,
    get_partitioner,
    is_label_based,
    partition_dataset_indices,
    register_partitioner,
)

__all__ = [
    "PARTITIONERS",
    "Partitioner",
    "dirichlet",
    "get_partitioner",
    "iid",
    "is_label_based",
    "label_histogram",
    "partition_dataset_indices",
    "quantity_skew",
    "register_partitioner",
    "shards",
    "validate_partition",
]
