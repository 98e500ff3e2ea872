"""Oracle tests: federated training equals a computation we can write down independently."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_fed import FederatedStrategy
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import CentralDM, FedDM, max_abs_diff, tiny_dataset, trainer


def _model(optimizer: str, seed: int = 0, **kw) -> BoringClassifier:
    torch.manual_seed(seed)
    return BoringClassifier(in_features=4, num_classes=3, hidden=8, batch_norm=True, lr=0.05, optimizer=optimizer, **kw)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_follow_mode_equals_centralized_training_on_the_same_batch_order(optimizer):
    data = tiny_dataset(45)
    fed = FedDM(data, num_workers=3, batch_size=5, seed=3)
    epochs = 3
    order = [[b for w in fed.workers for b in fed.loader.batch_indices(w, epoch=e)] for e in range(epochs)]
    central_model = _model(optimizer)
    fed_model = copy.deepcopy(central_model)

    trainer(max_epochs=epochs).fit(central_model, datamodule=CentralDM(data, order))
    trainer(max_epochs=epochs, strategy=FederatedStrategy(mode="follow")).fit(fed_model, datamodule=fed)

    assert max_abs_diff(central_model, fed_model) < 1e-5
    assert max_abs_diff(central_model, _model(optimizer)) > 1e-3  # it trained


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_fedavg_with_one_worker_equals_centralized_training(optimizer):
    data = tiny_dataset(40)
    fed = FedDM(data, num_workers=1, batch_size=8, seed=1)
    rounds = 3
    order = [fed.loader.batch_indices(fed.workers[0], epoch=r) for r in range(rounds)]
    central_model = _model(optimizer)
    fed_model = copy.deepcopy(central_model)

    trainer(max_epochs=rounds).fit(central_model, datamodule=CentralDM(data, order))
    trainer(max_epochs=rounds, strategy="federated").fit(fed_model, datamodule=fed)

    assert max_abs_diff(central_model, fed_model) < 1e-5


def test_fedavg_one_local_sgd_step_on_equal_shards_equals_sgd_on_the_union_batch():
    data = tiny_dataset(48)
    fed = FedDM(data, num_workers=4, batch_size=12, seed=2)  # 4 shards of 12: one batch per worker
    rounds = 3
    order = [[[i for w in fed.workers for b in fed.loader.batch_indices(w, epoch=r) for i in b]] for r in range(rounds)]
    torch.manual_seed(0)
    central_model = BoringClassifier(4, 3, hidden=8, lr=0.1, optimizer="sgd")  # no BatchNorm: FedSGD is about gradients
    fed_model = copy.deepcopy(central_model)

    trainer(max_epochs=rounds).fit(central_model, datamodule=CentralDM(data, order))
    trainer(max_epochs=rounds, strategy=FederatedStrategy(local_steps=1)).fit(fed_model, datamodule=fed)

    assert max_abs_diff(central_model, fed_model) < 1e-5
    assert max_abs_diff(central_model, BoringClassifier(4, 3, hidden=8)) > 1e-3


def test_fedavg_global_model_is_the_sample_weighted_mean_of_the_workers_models():
    data = tiny_dataset(30)
    fed = FedDM(data, num_workers=2, batch_size=4, seed=0, partition="quantity_skew", sigma=1.0, drop_last=True)
    sizes = [len(p) for p in fed.fed.partition]
    assert sizes[0] != sizes[1]
    start = _model("momentum")
    fed_model = copy.deepcopy(start)
    trainer(max_epochs=1, strategy="federated").fit(fed_model, datamodule=fed)

    # each worker, trained alone from the same start on its own batches, independently
    locals_ = []
    for w in fed.workers:
        local = copy.deepcopy(start)
        trainer(max_epochs=1).fit(local, datamodule=CentralDM(data, [fed.loader.batch_indices(w, epoch=0)]))
        locals_.append(local.state_dict())
    expected = {}
    for key, value in start.state_dict().items():
        mean = sum(n * s[key].double() for n, s in zip(sizes, locals_)) / sum(sizes)
        expected[key] = mean.round().to(value.dtype) if not value.dtype.is_floating_point else mean.to(value.dtype)
    got = fed_model.state_dict()
    for key in expected:
        assert torch.allclose(got[key].double(), expected[key].double(), atol=1e-5), key
