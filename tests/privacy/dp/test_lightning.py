"""DP inside a real Trainer with FederatedStrategy: client-level DP-FedAvg through `aggregation=`, the PrivacyMonitor
callback (logging, stopping at target_epsilon), checkpoint resume, and sample-level DP-SGD through the strategy's
``adjust_gradients`` hook (hooks attached to the unchanged LightningModule)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fed import FederatedStrategy
from lightning_fed.aggregation import FedAvg
from lightning_fed.privacy.dp import DPAggregator, DPConfig, DPSGDAggregator, PrivacyMonitor
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:.*the batches are not Poisson-sampled"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def client_setup(**cfg):
    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, lr=0.1)
    data = FedDM(tiny_dataset(40), num_workers=4, batch_size=5, seed=3)
    config = DPConfig(**{"noise_multiplier": 1.0, "clip_norm": 0.5, "seed": 1, **cfg})
    return model, data, FederatedStrategy(aggregation=DPAggregator(FedAvg(), config), clients_per_round=2)


def test_client_level_dp_fedavg_reports_opacus_epsilon_each_round():
    model, data, strategy = client_setup()
    monitor = PrivacyMonitor()
    trainer(max_epochs=3, strategy=strategy, callbacks=[monitor]).fit(model, datamodule=data)
    dp = strategy.aggregator
    assert dp.accountant.history == [(1.0, 0.5, 3)]
    reference, expected = RDPAccountant(), []
    for _ in range(3):
        reference.step(noise_multiplier=1.0, sample_rate=0.5)
        expected.append(reference.get_epsilon(delta=1e-5))
    assert [m["dp/epsilon"] for m in monitor.history] == expected


def test_target_epsilon_stops_training():
    model, data, strategy = client_setup(target_epsilon=4.0)
    t = trainer(max_epochs=50, strategy=strategy, callbacks=[PrivacyMonitor(log=False)])
    t.fit(model, datamodule=data)
    dp = strategy.aggregator
    assert 1 <= dp.rounds < 50 and t.current_epoch == dp.rounds
    assert dp.epsilon() <= 4.0 < dp.accountant.epsilon_after(1e-5, noise_multiplier=1.0, sample_rate=0.5)


def test_a_budget_the_first_round_would_pass_is_never_spent():
    model, data, strategy = client_setup(noise_multiplier=0.05, clip_norm=1.0, target_epsilon=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_epochs=3, strategy=strategy, callbacks=[PrivacyMonitor(log=False)])
    t.fit(model, datamodule=data)
    dp = strategy.aggregator
    assert dp.rounds == 0 and strategy.round_index == 0 and dp.epsilon() == 0.0  # the budget is intact
    assert dp.accountant.epsilon_after(1e-5, noise_multiplier=0.05, sample_rate=0.5) > 0.01
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no worker trained


def test_resume_from_checkpoint_continues_the_same_epsilon_and_model(tmp_path):
    cfg = {"adaptive_clipping": True, "clipped_count_stddev": 1.0, "noise_multiplier": 0.8}
    model, data, strategy = client_setup(**cfg)
    torch.manual_seed(5)
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data)
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    straight_dp = strategy.aggregator

    model, data, strategy = client_setup(**cfg)
    torch.manual_seed(5)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(max_epochs=2, strategy=strategy, enable_checkpointing=True, callbacks=[ckpt]).fit(model, datamodule=data)

    model, data, strategy = client_setup(**cfg)
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    dp = strategy.aggregator
    assert dp.accountant.history == straight_dp.accountant.history and dp.epsilon() == straight_dp.epsilon()
    assert dp.clip_norm == straight_dp.clip_norm
    assert all(torch.equal(v, straight[k]) for k, v in model.state_dict().items())


def sample_run(config: DPConfig | None):
    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, lr=0.1)
    data = FedDM(tiny_dataset(40), num_workers=2, batch_size=5, seed=3)  # 20 samples a worker: 4 full batches
    aggregation = FedAvg()
    if config is not None:
        aggregation = DPSGDAggregator(FedAvg(), config)  # FederatedStrategy attaches it to the model at fit start
    strategy = FederatedStrategy(aggregation=aggregation)
    trainer(max_epochs=2, strategy=strategy).fit(model, datamodule=data)
    return model, aggregation


def test_sample_level_without_noise_or_clipping_equals_plain_fedavg():
    plain, _ = sample_run(None)
    # fixed batches (no Poisson sampling), no noise, no effective clipping: the same computation as FedAvg
    private, dp = sample_run(DPConfig(level="sample", noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False))
    for a, b in zip(plain.state_dict().values(), private.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert {w: a.history for w, a in dp.accountants.items()} == {"w0": [(0.0, 0.25, 8)], "w1": [(0.0, 0.25, 8)]}


def test_sample_level_dp_sgd_trains_and_accounts_per_worker():
    plain, _ = sample_run(None)
    private, dp = sample_run(DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=0.5, seed=0))
    assert any(not torch.allclose(a, b) for a, b in zip(plain.state_dict().values(), private.state_dict().values()))
    reference = RDPAccountant()
    for _ in range(8):
        reference.step(noise_multiplier=1.0, sample_rate=0.25)
    assert dp.epsilons() == {"w0": reference.get_epsilon(delta=1e-5), "w1": reference.get_epsilon(delta=1e-5)}


def test_client_level_with_distributed_noise_under_secure_aggregation():
    from lightning_fed.secure_aggregation import SecureAggregator

    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, lr=0.1)
    data = FedDM(tiny_dataset(40), num_workers=4, batch_size=5, seed=3)
    config = DPConfig(noise_multiplier=1.0, clip_norm=0.5, noise="distributed", seed=1)
    dp = DPAggregator(SecureAggregator(FedAvg()), config)  # DP outermost: the workers noise, the server sees sums
    strategy = FederatedStrategy(aggregation=dp, clients_per_round=2)
    trainer(max_epochs=2, strategy=strategy).fit(model, datamodule=data)
    assert dp.accountant.history == [(1.0, 0.5, 2)] and all(torch.isfinite(p).all() for p in model.parameters())
