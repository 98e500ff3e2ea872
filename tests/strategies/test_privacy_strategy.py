"""FederatedStrategy(privacy=DPConfig(...)): one switch for client-level or sample-level DP, epsilon logged."""

from __future__ import annotations

import pytest
import torch

from lightning_fed import FederatedConfigError, FederatedStrategy
from lightning_fed.privacy.dp import DPAggregator, DPConfig, DPSGDAggregator, PrivacyMonitor
from lightning_fed.secure_aggregation import SecureAggregator
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


class _SizeSpy(BoringClassifier):
    sizes: list

    def training_step(self, batch, batch_idx):
        self.sizes.append(batch[0].shape[0])
        return super().training_step(batch, batch_idx)


def _fit(strategy: FederatedStrategy, rounds: int = 3):
    torch.manual_seed(0)
    model = _SizeSpy(4, 3, hidden=8, lr=0.1)
    model.sizes = []
    data = FedDM(tiny_dataset(40), num_workers=4, batch_size=5, seed=3)
    t = trainer(max_epochs=rounds, strategy=strategy)
    t.fit(model, datamodule=data)
    return model, t


def test_client_level_switch_wraps_the_aggregator_and_logs_opacus_epsilon():
    strategy = FederatedStrategy(clients_per_round=2, privacy=DPConfig(noise_multiplier=1.0, clip_norm=0.5, seed=1))
    _, t = _fit(strategy)
    assert isinstance(strategy.aggregator, DPAggregator)
    assert any(isinstance(c, PrivacyMonitor) for c in t.callbacks)  # added by the strategy
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.0, sample_rate=0.5)
    assert t.callback_metrics["dp/epsilon"].item() == pytest.approx(reference.get_epsilon(delta=1e-5))


def test_client_level_dp_composes_with_secure_aggregation():
    strategy = FederatedStrategy(
        clients_per_round=2,
        secure_aggregation=True,
        privacy=DPConfig(noise_multiplier=1.0, clip_norm=0.5, noise="distributed", seed=1),
    )
    model, _ = _fit(strategy, rounds=2)
    assert isinstance(strategy.aggregator, DPAggregator) and isinstance(strategy.aggregator.inner, SecureAggregator)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sample_level_switch_trains_on_poisson_batches_and_accounts_per_worker():
    strategy = FederatedStrategy(privacy=DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=0.5, seed=0))
    model, t = _fit(strategy, rounds=2)
    dp = strategy.aggregator
    assert isinstance(dp, DPSGDAggregator)
    assert len(model.sizes) == 16 and len(set(model.sizes)) > 1  # Poisson-sampled batches vary in size
    reference = RDPAccountant()
    for _ in range(2 * 2):  # 2 rounds x 2 batches (10 samples a worker, batch 5: q = 0.5)
        reference.step(noise_multiplier=1.0, sample_rate=0.5)
    assert dp.epsilons() == {f"w{i}": pytest.approx(reference.get_epsilon(delta=1e-5)) for i in range(4)}
    assert t.callback_metrics["dp/epsilon"].item() == pytest.approx(reference.get_epsilon(delta=1e-5))


def test_privacy_switch_errors():
    with pytest.raises(FederatedConfigError, match="needs mode='fedavg', got mode='follow'"):
        FederatedStrategy(mode="follow", privacy=DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    with pytest.raises(FederatedConfigError, match=r"`privacy=\{'epsilon': 3\}` is not valid"):
        FederatedStrategy(privacy={"epsilon": 3})
