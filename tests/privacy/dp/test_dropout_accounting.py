"""Distributed noise with dropouts: each of the ``n`` expected workers adds ``1 / n`` of the noise's variance, so a
round where only ``k`` contribute carries ``z sqrt(k / n)``, and that is what the accountant records (the audit's
dp_distributed_dropout.py: it used to record ``z``, under-reporting epsilon)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.privacy.dp.test_client_level import make, random_updates
from tests.privacy.dp.test_functional import N, std_matches

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant


def partial_round(agg, global_tensors, updates, contributing):
    """A round where every worker in ``updates`` starts, but only ``contributing`` send (the others drop out)."""
    agg.begin_round(global_tensors)
    for worker_id, update in updates.items():
        agg.worker_start(worker_id, global_tensors)
        if worker_id in contributing:
            sent = agg.worker_update(worker_id, [t.double() for t in update], num_steps=1, lr=0.1)
            agg.accumulate(sent, weight=10, worker_id=worker_id)
        else:
            agg.drop(worker_id)
    return agg.finalize(global_tensors)


def test_dropouts_are_accounted_at_the_noise_actually_in_the_sum():
    z, n = 1.3, 4
    agg = make(noise="distributed", noise_multiplier=z, workers=8, per_round=n)
    reference = RDPAccountant()
    for r, k in enumerate([4, 2, 3, 2]):
        updates = random_updates(r, count=n)
        partial_round(agg, [torch.zeros(6), torch.zeros(2)], updates, list(updates)[:k])
        reference.step(noise_multiplier=z * math.sqrt(k / n), sample_rate=n / 8)
    assert agg.accountant.history == reference.history
    assert agg.epsilon() == reference.get_epsilon(delta=1e-5)
    full = RDPAccountant()
    for _ in range(4):
        full.step(noise_multiplier=z, sample_rate=n / 8)
    assert agg.epsilon() > full.get_epsilon(delta=1e-5)  # the old, optimistic figure


def test_the_recorded_multiplier_is_the_noise_measured_in_the_sum():
    z, c, n, k = 1.0, 1.0, 4, 2
    agg = make(noise="distributed", noise_multiplier=z, clip_norm=c, workers=4, per_round=n)
    updates = {f"w{i}": [torch.zeros(N)] for i in range(n)}
    new = partial_round(agg, [torch.zeros(N, dtype=torch.float64)], updates, ["w0", "w1"])
    noisy_sum = new[0] * k  # FedAvg divides by the k contributions
    (recorded, _, _) = agg.accountant.history[0]
    assert recorded == z * math.sqrt(k / n)
    assert std_matches(noisy_sum, recorded * c) and not std_matches(noisy_sum, z * c)


@pytest.mark.parametrize("noise", ["server", "distributed"])
def test_nothing_changes_when_every_expected_worker_contributes(noise):
    z = 1.1
    agg = make(noise=noise, noise_multiplier=z, workers=10, per_round=4)
    for r in range(3):
        updates = random_updates(r)
        partial_round(agg, [torch.zeros(6), torch.zeros(2)], updates, list(updates))
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=z, sample_rate=0.4)
    assert agg.accountant.history == [(z, 0.4, 3)] == reference.history
    assert agg.epsilon() == reference.get_epsilon(delta=1e-5)


def test_server_noise_is_unaffected_by_dropouts():
    agg = make(noise="server", noise_multiplier=1.1, workers=10, per_round=4)
    updates = random_updates(0)
    partial_round(agg, [torch.zeros(6), torch.zeros(2)], updates, ["w0"])
    assert agg.accountant.history == [(1.1, 0.4, 1)]  # the server adds the full noise whoever contributed


def test_target_epsilon_stop_uses_the_honest_epsilon():
    z, n, target = 1.0, 4, 8.0
    agg = make(noise="distributed", noise_multiplier=z, target_epsilon=target, workers=8, per_round=n)
    rounds = 0
    while not agg.should_stop:
        updates = random_updates(rounds, count=n)
        partial_round(agg, [torch.zeros(6), torch.zeros(2)], updates, list(updates)[:2])  # half drop, every round
        rounds += 1
        assert rounds < 500
    z_eff = z * math.sqrt(2 / n)
    reference = RDPAccountant()
    for _ in range(rounds):
        reference.step(noise_multiplier=z_eff, sample_rate=0.5)
    assert agg.epsilon() == reference.get_epsilon(delta=1e-5) <= target
    assert agg.accountant.epsilon_after(1e-5, noise_multiplier=z_eff, sample_rate=0.5) > target
    # planned at the full z, the run would have gone on past the target
    assert agg.accountant.epsilon_after(1e-5, noise_multiplier=z, sample_rate=0.5) <= target


def test_adaptive_clipping_under_secure_aggregation_is_refused():
    """The audit's adaptive_bits.py: each worker's clipped bit would reach the server outside the masked sum."""
    from lightning_fed.aggregation import FedAvg
    from lightning_fed.exceptions import FederatedConfigError
    from lightning_fed.privacy.dp import DPAggregator, DPConfig
    from lightning_fed.secure_aggregation import SecureAggregator

    config = DPConfig(noise_multiplier=1.0, clip_norm=1.0, noise="distributed", adaptive_clipping=True)
    with pytest.raises(
        FederatedConfigError,
        match=r"adaptive_clipping=True\) with secure aggregation \(`aggregation=SecureAggregator\(.*adaptive_clipping=False",
    ):
        DPAggregator(SecureAggregator(FedAvg()), config)
    DPAggregator(FedAvg(), config)  # without secure aggregation the server sees each update anyway
    DPAggregator(SecureAggregator(FedAvg()), config.replace(adaptive_clipping=False))
