"""Aggregators through the full Trainer: FedAvgM(0), FedProx(0) and SCAFFOLD's first round equal FedAvg; FedProx
equals centralized training on the proximal loss; a FedAdam round equals Algorithm 2 on FedAvg's mean update."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_fed import FederatedStrategy
from lightning_fed.aggregation import SCAFFOLD, FedAdam, FedAvgM, FedProx
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import CentralDM, FedDM, tiny_dataset, trainer

ROUNDS = 2


class _Snapshots(pl.Callback):
    """The global model after each round (the strategy aggregates at the round's last step)."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rounds.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _start() -> BoringClassifier:
    torch.manual_seed(0)
    return BoringClassifier(4, 3, hidden=8, batch_norm=True, lr=0.1, optimizer="momentum")


def _fit(aggregation, rounds: int = ROUNDS) -> list[dict[str, torch.Tensor]]:
    data = FedDM(tiny_dataset(36), num_workers=3, batch_size=4, seed=5, partition="quantity_skew")
    snapshots = _Snapshots()
    trainer(max_epochs=rounds, strategy=FederatedStrategy(aggregation=aggregation), callbacks=[snapshots]).fit(
        _start(), datamodule=data
    )
    return snapshots.rounds


@pytest.fixture(scope="module")
def fedavg() -> list[dict[str, torch.Tensor]]:
    return _fit("fedavg")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("aggregation", [FedAvgM(server_lr=1.0, momentum=0.0), FedProx(mu=0.0)], ids=repr)
def test_zero_momentum_and_zero_mu_equal_fedavg_bit_for_bit(fedavg, aggregation):
    got = _fit(aggregation)
    assert all(_equal(g, e) for g, e in zip(got, fedavg))
    assert not _equal(fedavg[-1], _start().state_dict())  # it trained


def test_scaffold_first_round_equals_fedavg_and_then_corrects(fedavg):
    got = _fit(SCAFFOLD())
    assert _equal(got[0], fedavg[0])
    assert not _equal(got[1], fedavg[1])  # c and c_i are no longer zero in round 2


def test_fedadam_round_is_algorithm_2_on_fedavgs_mean_update(fedavg):
    lr, beta1, beta2, tau = 0.05, 0.9, 0.99, 1e-3
    got = _fit(FedAdam(server_lr=lr, beta1=beta1, beta2=beta2, tau=tau), rounds=1)[0]
    start = _start().state_dict()
    for key, x0 in start.items():
        delta = fedavg[0][key].double().numpy() - x0.double().numpy()  # FedAvg's mean update of round 1
        if "running_" in key or key.endswith("num_batches_tracked"):  # buffers take the weighted mean, as FedAvg
            assert got[key].dtype == fedavg[0][key].dtype and torch.equal(got[key], fedavg[0][key]), key
            continue
        m = (1 - beta1) * delta
        v = (1 - beta2) * delta**2
        expected = x0.double().numpy() + lr * m / (np.sqrt(v) + tau)
        # FedAvg's float32 rounding of x0 + delta limits how well delta is known: compare at float32 precision
        np.testing.assert_allclose(got[key].double().numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=key)


# -- FedProx == centralized training on loss + mu/2 ||w - w_round_start||^2 ------------------------------------------
class _ProximalCentral(BoringClassifier):
    def __init__(self, mu: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mu = mu
        self.anchor: list[torch.Tensor] = []

    def on_train_epoch_start(self) -> None:  # one epoch = one round: the anchor is the round's start
        self.anchor = [p.detach().clone() for p in self.parameters()]

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss + self.mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(self.parameters(), self.anchor))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "fp16-amp"])
def test_fedprox_with_one_worker_equals_centralized_training_on_the_proximal_loss(amp):
    mu, rounds = 0.5, 2
    data = tiny_dataset(48)
    fed = FedDM(data, num_workers=1, batch_size=8, seed=1)  # 6 batches a round
    order = [fed.loader.batch_indices(fed.workers[0], epoch=r) for r in range(rounds)]
    torch.manual_seed(0)
    central = _ProximalCentral(mu, in_features=4, num_classes=3, hidden=8, lr=0.1, optimizer="momentum")
    fed_model = BoringClassifier(4, 3, hidden=8, lr=0.1, optimizer="momentum")
    fed_model.load_state_dict(central.state_dict())
    plain = copy.deepcopy(fed_model)

    def precision():  # fp16 AMP with a GradScaler (on CPU here): the gradients are scaled when FedProx adds its term
        return MixedPrecision("16-mixed", "cpu") if amp else None

    # accumulate_grad_batches=2: the proximal gradient must be added once per step, not once per backward
    central_trainer = trainer(max_epochs=rounds, accumulate_grad_batches=2, plugins=[precision()] if amp else None)
    central_trainer.fit(central, datamodule=CentralDM(data, order))
    strategy = FederatedStrategy(aggregation=FedProx(mu=mu), precision_plugin=precision())
    trainer(max_epochs=rounds, accumulate_grad_batches=2, strategy=strategy).fit(fed_model, datamodule=fed)
    sc, sf = central.state_dict(), fed_model.state_dict()
    assert max((sc[k] - sf[k]).abs().max().item() for k in sc) < 1e-6

    if not amp:
        trainer(max_epochs=rounds, accumulate_grad_batches=2, strategy="federated").fit(plain, datamodule=fed)
        sp = plain.state_dict()
        assert max((sp[k] - sf[k]).abs().max().item() for k in sc) > 1e-4  # the proximal term mattered
