"""Tests of the partitioner registry and ``partition_dataset_indices``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lightning_fed.data.partition import (
    PARTITIONERS,
    dirichlet,
    get_partitioner,
    iid,
    is_label_based,
    partition_dataset_indices,
    quantity_skew,
    register_partitioner,
    shards,
)
from lightning_fed.exceptions import FederatedConfigError


@pytest.fixture(autouse=True)
def restore_registry() -> Iterator[None]:
    saved = dict(PARTITIONERS)
    yield
    PARTITIONERS.clear()
    PARTITIONERS.update(saved)


def strided(num_samples: int, num_workers: int, *, seed: int = 0) -> list[list[int]]:
    return [list(range(w, num_samples, num_workers)) for w in range(num_workers)]


def by_label(labels, num_workers: int) -> list[list[int]]:  # no seed parameter: seed must not be passed
    y = np.asarray(labels)
    return [np.flatnonzero(y % num_workers == w).tolist() for w in range(num_workers)]


def test_builtin_names() -> None:
    expected = {"iid": iid, "dirichlet": dirichlet, "shards": shards, "quantity_skew": quantity_skew}
    assert expected == PARTITIONERS
    for name, fn in PARTITIONERS.items():
        assert get_partitioner(name) is fn
    assert is_label_based(dirichlet) and is_label_based(shards)
    assert not is_label_based(iid) and not is_label_based(quantity_skew)


def test_callable_passes_through() -> None:
    assert get_partitioner(strided) is strided
    lam = lambda labels, n: [[0]]  # noqa: E731
    assert get_partitioner(lam) is lam


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(FederatedConfigError, match=r"'nope'.*'dirichlet', 'iid', 'quantity_skew', 'shards'"):
        get_partitioner("nope")
    with pytest.raises(FederatedConfigError, match=r"^`partition=42` is neither a registered name nor a callable"):
        get_partitioner(42)
    # the caller's own name for the argument, which the CLI turns into its flag
    with pytest.raises(FederatedConfigError, match=r"^`partitioner='nope'` is not a known partitioner: known names"):
        get_partitioner("nope", argument="partitioner")


def test_register_and_duplicate() -> None:
    assert register_partitioner("strided", strided) is strided
    assert get_partitioner("strided") is strided
    with pytest.raises(FederatedConfigError, match=r"name='strided'.*already registered.*override=True"):
        register_partitioner("strided", by_label)
    with pytest.raises(FederatedConfigError, match=r"name='iid'.*already registered"):
        register_partitioner("iid", strided)
    register_partitioner("strided", by_label, override=True)
    assert get_partitioner("strided") is by_label
    with pytest.raises(FederatedConfigError, match=r"name=''"):
        register_partitioner("", strided)
    with pytest.raises(FederatedConfigError, match=r"fn=3.*not callable"):
        register_partitioner("three", 3)


def test_partition_dataset_indices_by_name() -> None:
    labels = np.repeat(np.arange(4), 25)
    assert partition_dataset_indices("iid", num_samples=100, num_workers=3, seed=4) == iid(100, 3, seed=4)
    got = partition_dataset_indices("dirichlet", num_samples=100, num_workers=4, labels=labels, seed=2, alpha=0.3)
    assert got == dirichlet(labels, 4, 0.3, seed=2)
    got = partition_dataset_indices(
        "shards", num_samples=100, num_workers=5, labels=torch.tensor(labels), shards_per_worker=4
    )
    assert got == shards(labels, 5, 4)
    got = partition_dataset_indices("quantity_skew", num_samples=100, num_workers=4, labels=labels, sigma=2.0)
    assert got == quantity_skew(100, 4, sigma=2.0)  # labels are ignored by size-based partitioners


def test_label_based_without_labels() -> None:
    for name in ("dirichlet", "shards"):
        with pytest.raises(FederatedConfigError, match=rf"'{name}' needs labels.*labels=None.*targets"):
            partition_dataset_indices(name, num_samples=10, num_workers=2, alpha=1.0)
    with pytest.raises(FederatedConfigError, match=r"'by_label' needs labels"):
        partition_dataset_indices(by_label, num_samples=10, num_workers=2)


def test_custom_callables() -> None:
    labels = list(range(12))
    assert partition_dataset_indices(strided, num_samples=12, num_workers=3) == strided(12, 3)
    assert partition_dataset_indices(by_label, num_samples=12, num_workers=3, labels=labels) == by_label(labels, 3)
    register_partitioner("by_label", by_label)
    assert partition_dataset_indices("by_label", num_samples=12, num_workers=3, labels=labels) == by_label(labels, 3)


def test_custom_callable_receives_seed_and_kwargs() -> None:
    seen = {}

    def spy(num_samples, num_workers, **kwargs):
        seen.update(kwargs)
        return iid(num_samples, num_workers)

    partition_dataset_indices(spy, num_samples=10, num_workers=2, seed=9, extra="x")
    assert seen == {"seed": 9, "extra": "x"}


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ([[0, 1, 2], [2, 3]], r"index 2 is in both worker 0 and worker 1"),
        ([[0, 1], [2]], r"assigned to no worker \(first: 3\)"),
        ([[0, 1, 2, 3]], r"1 worker lists but `num_workers=2`"),
        ([[0, 1], [2, 4]], r"index 4.*num_samples=4"),
    ],
)
def test_bad_custom_result_is_caught(result: list[list[int]], match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        partition_dataset_indices(lambda num_samples, num_workers: result, num_samples=4, num_workers=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 4, "num_workers": 0}, r"num_workers=0"),
        ({"num_samples": 4, "num_workers": 5}, r"num_workers=5.*more than"),
        ({"num_samples": -4, "num_workers": 1}, r"num_samples=-4"),
        ({"num_samples": 4, "num_workers": 2, "labels": [0, 1, 2]}, r"labels.*3 entries.*num_samples=4"),
    ],
)
def test_entry_point_bad_inputs(kwargs: dict, match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        partition_dataset_indices(strided, **kwargs)
