"""The pure aggregation core against numpy references, and the robustness oracle on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fed.aggregation import FedAvg, FedMedian, FedTrimmedAvg, Krum
from lightning_fed.aggregation.functional import (
    apply_update,
    coordinate_median,
    krum_scores,
    krum_select,
    trimmed_mean,
    weighted_mean,
)


def _updates(n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
            for _ in range(n)]  # fmt: skip


def _np(updates: list[list[torch.Tensor]], i: int) -> np.ndarray:
    return np.stack([u[i].numpy() for u in updates])


@pytest.mark.parametrize("n", [1, 4, 5])
def test_coordinate_median_equals_numpy(n):
    updates = _updates(n)
    got = coordinate_median(updates)
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), np.median(_np(updates, i), axis=0), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("n", "beta"), [(5, 0.0), (5, 0.2), (7, 0.3), (10, 0.49)])
def test_trimmed_mean_equals_numpy(n, beta):
    updates = _updates(n, seed=1)
    k = int(np.floor(beta * n))
    got = trimmed_mean(updates, beta)
    for i in range(2):
        expected = np.sort(_np(updates, i), axis=0)[k : n - k].mean(axis=0)
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=0, atol=1e-12)


def test_krum_scores_and_selection_equal_a_brute_force_reference():
    updates = _updates(7, seed=2)
    f = 2
    vectors = np.stack([np.concatenate([t.numpy().ravel() for t in u]) for u in updates])
    expected = []
    for i, v in enumerate(vectors):
        d = sorted(float(((v - w) ** 2).sum()) for j, w in enumerate(vectors) if j != i)
        expected.append(sum(d[: len(vectors) - f - 2]))
    got = krum_scores(torch.from_numpy(vectors), num_byzantine=f)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert krum_select(updates, f, num_selected=3) == [int(i) for i in np.argsort(expected, kind="stable")[:3]]


def test_krum_distances_can_leave_tensors_out():
    # on the first tensor alone, 1 and 2 tie for the best score (the earlier wins); 1000 in the second tensor of
    # update 1 (think: an integer buffer) pushes it away unless that tensor is left out of the distances
    updates = [[torch.tensor([float(v)]), torch.tensor([1000.0 * (i == 1)])] for i, v in enumerate([0, 1, 2, 3, 50])]
    assert krum_select(updates, 1) == [2]
    assert krum_select(updates, 1, include=[True, False]) == [1]


def test_weighted_mean_and_integer_rounding():
    mean = weighted_mean([[torch.tensor([1.0])], [torch.tensor([4.0])]], [2.0, 1.0])
    assert mean == [torch.tensor([2.0], dtype=torch.float64)]
    new = apply_update([torch.tensor([1.0]), torch.tensor(10)], [torch.tensor([0.5]), torch.tensor(2.6)])
    assert new[0].dtype == torch.float32 and new[1].dtype == torch.int64 and new[1].item() == 13


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: coordinate_median([]), "at least one update"),
        (lambda: trimmed_mean(_updates(3), 0.5), r"beta in \[0, 0.5\)"),
        (lambda: krum_scores(torch.zeros(4, 2), num_byzantine=1), "n >= 2f \\+ 3 updates: got n=4 for f=1"),
        (lambda: krum_select(_updates(5), 1, num_selected=6), "num_selected <= 5"),
        (lambda: weighted_mean([[torch.zeros(1)]], [1.0, 2.0]), "one weight per model"),
    ],
)
def test_functional_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- the robustness oracle: 1 of 5 workers sends a 100x scaled update ------------------------------------------------
def _aggregate(agg, updates, weights):
    zero = [torch.zeros_like(t, dtype=torch.float32) for t in updates[0]]
    agg.begin_round(zero)
    for i, (u, w) in enumerate(zip(updates, weights)):
        agg.accumulate(u, weight=w, worker_id=f"w{i}")
    return [t.double() for t in agg.finalize(zero)]


def test_robust_aggregators_stay_near_the_honest_aggregate_under_a_scaled_update():
    g = torch.Generator().manual_seed(3)
    common = torch.randn(20, generator=g, dtype=torch.float64)
    honest = [[common + 0.1 * torch.randn(20, generator=g, dtype=torch.float64)] for _ in range(4)]
    attacked = [*honest, [100.0 * honest[0][0]]]  # worker 4 scales an honest-looking update by 100
    weights = [10.0] * 5
    honest_mean = np.mean([u[0].numpy() for u in honest], axis=0)
    # the honest spread: how far an honest update is from the honest mean, coordinate by coordinate
    spread = max(np.abs(u[0].numpy() - honest_mean).max() for u in honest)

    for agg in (FedMedian(), FedTrimmedAvg(beta=0.2), Krum(num_byzantine=1), Krum(num_byzantine=1, num_selected=3)):
        got = _aggregate(agg, attacked, weights)[0].numpy()
        assert np.abs(got - honest_mean).max() <= spread + 1e-6, agg
    fedavg = _aggregate(FedAvg(), attacked, weights)[0].numpy()
    assert np.abs(fedavg - honest_mean).max() > 10 * spread


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0], True),
        ([float("nan"), 1.0], False),
        ([float("inf"), 1.0], False),
        ([float("-inf"), float("inf")], False),  # the sum is NaN, not 0
        ([3e38, 3e38, -1e38], True),  # the float32 sum overflows: the values decide
        ([3e38, 3e38, float("nan")], False),
    ],
)
def test_all_finite_agrees_with_checking_every_value(values, finite):
    from lightning_fed.aggregation.functional import all_finite

    tensors = [torch.tensor(values, dtype=torch.float32), torch.arange(3), torch.zeros(2, 2, dtype=torch.float64)]
    assert all_finite(tensors) is finite is all(bool(torch.isfinite(t).all()) for t in tensors)
    assert all_finite([torch.arange(4)]) and all_finite([])
