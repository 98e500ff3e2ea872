"""Tests of the partitioning functions in ``lightning_fed.data.partition.functional``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_fed.data.partition import (
    dirichlet,
    iid,
    label_histogram,
    quantity_skew,
    shards,
    validate_partition,
)
from lightning_fed.exceptions import FederatedConfigError

FAST = settings(max_examples=40, deadline=None)


def assert_exact_cover(parts: list[list[int]], num_samples: int, num_workers: int) -> None:
    assert len(parts) == num_workers
    assert all(isinstance(i, int) for p in parts for i in p)
    assert sorted(i for p in parts for i in p) == list(range(num_samples))
    assert sum(len(p) for p in parts) == num_samples
    assert all(p == sorted(p) for p in parts)  # documented order: ascending within a worker
    validate_partition(parts, num_samples, num_workers=num_workers)


def make_labels(num_samples: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=num_samples)


def mean_normalized_entropy(hist: np.ndarray) -> float:
    p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    logs = np.log(np.where(p > 0, p, 1.0))
    return float((-(p * logs).sum(axis=1) / np.log(hist.shape[1])).mean())


# --------------------------------------------------------------------------------------------- properties


@FAST
@given(n=st.integers(1, 500), w=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_iid_exact_cover_and_balanced(n: int, w: int, seed: int) -> None:
    w = min(w, n)
    parts = iid(n, w, seed=seed)
    assert_exact_cover(parts, n, w)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert parts == iid(n, w, seed=seed)


@FAST
@given(n=st.integers(1, 400), w=st.integers(1, 20), c=st.integers(1, 12), alpha=st.sampled_from([0.1, 1.0, 100.0]))
def test_dirichlet_exact_cover_deterministic(n: int, w: int, c: int, alpha: float) -> None:
    w = min(w, n)
    labels = make_labels(n, c, seed=n)
    parts = dirichlet(labels, w, alpha, min_size=0, seed=3)
    assert_exact_cover(parts, n, w)
    assert parts == dirichlet(labels, w, alpha, min_size=0, seed=3)


@FAST
@given(
    w=st.integers(1, 12), s=st.integers(1, 4), size=st.integers(1, 20), c=st.integers(1, 10), seed=st.integers(0, 99)
)
def test_shards_exact_cover_equal_sizes(w: int, s: int, size: int, c: int, seed: int) -> None:
    n = w * s * size
    labels = make_labels(n, c, seed=seed)
    parts = shards(labels, w, s, seed=seed)
    assert_exact_cover(parts, n, w)
    assert {len(p) for p in parts} == {s * size}
    assert parts == shards(labels, w, s, seed=seed)


@FAST
@given(
    n=st.integers(1, 500),
    w=st.integers(1, 30),
    min_size=st.integers(0, 5),
    distribution=st.sampled_from(["lognormal", "powerlaw"]),
    seed=st.integers(0, 2**32),
)
def test_quantity_skew_exact_cover_min_size(n: int, w: int, min_size: int, distribution: str, seed: int) -> None:
    w = min(w, n)
    min_size = min(min_size, n // w)
    parts = quantity_skew(n, w, seed=seed, distribution=distribution, sigma=2.0, power=1.2, min_size=min_size)
    assert_exact_cover(parts, n, w)
    assert min(len(p) for p in parts) >= min_size
    assert parts == quantity_skew(n, w, seed=seed, distribution=distribution, sigma=2.0, power=1.2, min_size=min_size)


@FAST
@given(seeds=st.lists(st.integers(0, 2**32), min_size=2, max_size=2, unique=True), kind=st.sampled_from(range(4)))
def test_different_seeds_give_different_partitions(seeds: list[int], kind: int) -> None:
    labels = make_labels(400, 10, seed=0)
    calls = [
        lambda s: iid(400, 8, seed=s),
        lambda s: dirichlet(labels, 8, 1.0, seed=s),
        lambda s: shards(labels, 10, 4, seed=s),  # 40 shards: 40! / (4!^10) distinct deals
        lambda s: quantity_skew(400, 8, seed=s),
    ]
    assert calls[kind](seeds[0]) != calls[kind](seeds[1])


def test_labels_accept_list_numpy_and_torch() -> None:
    labels = [0, 1, 2, 3] * 25
    expected = dirichlet(labels, 4, 0.5, seed=7)
    assert dirichlet(np.array(labels, dtype=np.int32), 4, 0.5, seed=7) == expected
    assert dirichlet(torch.tensor(labels), 4, 0.5, seed=7) == expected
    assert dirichlet(np.array(labels, dtype=float), 4, 0.5, seed=7) == expected  # integral floats are fine
    assert shards(torch.tensor(labels), 4, 5, seed=7) == shards(labels, 4, 5, seed=7)


# --------------------------------------------------------------------------------------------- skew


def test_dirichlet_alpha_controls_label_skew() -> None:
    labels = np.repeat(np.arange(10), 500)  # 10 classes x 500, 5000 samples, 10 workers
    entropy = {
        alpha: np.mean(
            [mean_normalized_entropy(label_histogram(labels, dirichlet(labels, 10, alpha, seed=s))) for s in range(5)]
        )
        for alpha in (0.1, 1000.0)
    }
    # Measured over 200 seeds: alpha=0.1 per-seed 0.29..0.54 (mean 0.43); alpha=1000 always > 0.999.
    assert entropy[0.1] < 0.6
    assert entropy[1000.0] > 0.99


def test_dirichlet_min_size_respected() -> None:
    labels = make_labels(2000, 10, seed=1)
    parts = dirichlet(labels, 20, 0.1, min_size=10, seed=0)
    assert min(len(p) for p in parts) >= 10


def test_shards_label_pure_give_at_most_shards_per_worker_labels() -> None:
    labels = np.repeat(np.arange(10), 120)  # each class count 120 is a multiple of the shard size 40 (30 shards)
    np.random.default_rng(0).shuffle(labels)
    parts = shards(labels, 15, 2, seed=5)
    hist = label_histogram(labels, parts)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert (hist % 40 == 0).all()


def test_shards_mnist_sized() -> None:
    labels = make_labels(60_000, 10, seed=0)
    parts = shards(labels, 100, 2, seed=0)
    assert [len(p) for p in parts] == [600] * 100
    assert_exact_cover(parts, 60_000, 100)


def test_quantity_skew_sizes_unequal() -> None:
    for distribution in ("lognormal", "powerlaw"):
        sizes = [len(p) for p in quantity_skew(10_000, 20, distribution=distribution, sigma=2.0, min_size=5, seed=0)]
        assert len(set(sizes)) > 1 and max(sizes) > 3 * min(sizes)
        assert min(sizes) >= 5 and sum(sizes) == 10_000
    sizes = [len(p) for p in quantity_skew(100, 4, sigma=0.0)]  # sigma=0: equal weights
    assert sizes == [25, 25, 25, 25]


def test_label_histogram() -> None:
    hist = label_histogram(torch.tensor([0, 1, 1, 2]), [[0, 1], [2, 3]], num_classes=4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    assert hist.dtype == np.int64
    with pytest.raises(FederatedConfigError, match=r"num_classes=2"):
        label_histogram([0, 1, 2], [[0, 1, 2]], num_classes=2)
    with pytest.raises(FederatedConfigError, match=r"partition\[0\].*out of range"):
        label_histogram([0, 1, 2], [[3]])


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: iid(10, 0), r"num_workers=0"),
        (lambda: iid(10, 2.5), r"num_workers=2\.5"),
        (lambda: iid(10, True), r"num_workers=True"),
        (lambda: iid(-1, 2), r"num_samples=-1"),
        (lambda: iid(5, 6), r"num_workers=6.*more than.*5"),
        (lambda: iid(10, 2, seed=-3), r"seed=-3"),
        (lambda: dirichlet([0, 1] * 5, 0, 1.0), r"num_workers=0"),
        (lambda: dirichlet([0, 1] * 5, 11, 1.0), r"num_workers=11.*more than.*10"),
        (lambda: dirichlet([0, 1] * 5, 2, 0.0), r"alpha=0\.0.*> 0"),
        (lambda: dirichlet([0, 1] * 5, 2, -1), r"alpha=-1"),
        (lambda: dirichlet([0, 1] * 5, 2, float("nan")), r"alpha=nan"),
        (lambda: dirichlet([0, 1] * 5, 3, 1.0, min_size=4), r"min_size=4.*impossible.*at most 3"),
        (lambda: dirichlet([0, 1] * 5, 2, 1.0, max_retries=0), r"max_retries=0"),
        (lambda: dirichlet([[0, 1], [1, 0]], 2, 1.0), r"labels.*1-D.*\(2, 2\)"),
        (lambda: dirichlet([0, -1, 1], 2, 1.0), r"labels.*non-negative.*labels\[1\]=-1"),
        (lambda: dirichlet([0, 1.5, 1], 2, 1.0), r"labels.*integer.*labels\[1\]=1\.5"),
        (lambda: dirichlet(["a", "b"], 2, 1.0), r"labels.*integer.*'a'"),
        (lambda: dirichlet(torch.tensor([[0, 1]]), 1, 1.0), r"labels.*1-D"),
        (
            lambda: shards([0] * 10, 3, 2),
            r"labels` has 10 samples.*num_workers \* shards_per_worker = 3 \* 2 = 6.*divides 10.*6 samples",
        ),
        (lambda: shards([0] * 10, 5, 0), r"shards_per_worker=0"),
        (lambda: shards([0] * 10, 0), r"num_workers=0"),
        (lambda: quantity_skew(10, 0), r"num_workers=0"),
        (lambda: quantity_skew(10, 11), r"num_workers=11"),
        (lambda: quantity_skew(10, 3, min_size=4), r"min_size=4.*impossible"),
        (lambda: quantity_skew(10, 3, min_size=-1), r"min_size=-1"),
        (lambda: quantity_skew(10, 3, distribution="zipf"), r"distribution='zipf'.*lognormal.*powerlaw"),
        (lambda: quantity_skew(10, 3, sigma=-1.0), r"sigma=-1\.0"),
        (lambda: quantity_skew(10, 3, distribution="powerlaw", power=0), r"power=0"),
    ],
)
def test_bad_inputs_raise(call, match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        call()


def test_dirichlet_gives_up_with_clear_message() -> None:
    labels = np.zeros(100, dtype=int)  # one class, alpha tiny: nearly all samples go to one worker
    with pytest.raises(FederatedConfigError, match=r"max_retries=3.*min_size=10.*Raise `alpha` \(given 0\.001\)"):
        dirichlet(labels, 10, 0.001, min_size=10, max_retries=3)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="num_workers=0"):
        iid(10, 0)


@pytest.mark.parametrize(
    ("partition", "match"),
    [
        ([[0, 1], [1, 2]], r"index 1 is in both worker 0 and worker 1"),
        ([[0, 0, 1, 2]], r"index 0 appears twice in worker 0"),
        ([[0, 1]], r"1 of 3 indices are assigned to no worker \(first: 2\)"),
        ([[0, 1, 2, 3]], r"index 3.*num_samples=3"),
        ([[0, 1, -1, 2]], r"index -1.*num_samples=3"),
        ([[0, 1.5, 2]], r"worker 0.*integer"),
        ([0, 1, 2], r"worker 0.*1-D"),
        ("012", r"list of index lists"),
    ],
)
def test_validate_partition_errors(partition, match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        validate_partition(partition, 3)


def test_validate_partition_accepts_arrays_and_empty_workers() -> None:
    validate_partition([np.array([2, 0]), [], torch.tensor([1]).tolist()], 3, num_workers=3)
    with pytest.raises(FederatedConfigError, match=r"2 worker lists.*num_workers=3"):
        validate_partition([[0], [1, 2]], 3, num_workers=3)
