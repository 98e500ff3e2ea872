"""FederatedStrategy(secure_aggregation=...): the round's sum through secure aggregation, end to end."""

from __future__ import annotations

import pytest
import torch

from lightning_fed import FederatedConfigError, FederatedStrategy
from lightning_fed.aggregation import FedAvg
from lightning_fed.secure_aggregation import SecAggServer, SecureAggregationConfig, SecureAggregator
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers import current_worker
from tests.strategies.helpers import FedDM, tiny_dataset, trainer


def _fit(**strategy_kwargs) -> tuple[list[torch.Tensor], FederatedStrategy]:
    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, optimizer="momentum")
    data = FedDM(tiny_dataset(60), num_workers=5, batch_size=6, seed=3)
    strategy = FederatedStrategy(**strategy_kwargs)
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data)
    return [p.detach().clone() for p in model.parameters()], strategy


def test_secure_aggregation_matches_fedavg_within_the_quantization_bound():
    plain, _ = _fit()
    secure, strategy = _fit(secure_aggregation=SecureAggregationConfig(seed=0))
    assert isinstance(strategy.aggregator, SecureAggregator)
    assert strategy.round_index == 3
    assert all(torch.allclose(s, p, atol=1e-5) for s, p in zip(secure, plain))


def test_updates_are_masked_at_the_worker_and_the_server_receives_masked_integers(monkeypatch):
    received, masked_where = [], []
    receive = SecAggServer.receive_masked
    accumulate = SecureAggregator.accumulate

    def spy_receive(self, worker_id, y):
        received.append((worker_id, y.dtype))
        receive(self, worker_id, y)

    def spy_accumulate(self, update, weight, worker_id):
        worker = current_worker()
        masked_where.append((worker_id, worker.id if worker is not None else None))
        accumulate(self, update, weight, worker_id)

    monkeypatch.setattr(SecAggServer, "receive_masked", spy_receive)
    monkeypatch.setattr(SecureAggregator, "accumulate", spy_accumulate)
    _fit(secure_aggregation=True, clients_per_round=3)
    assert len(received) == 9 and {dtype for _, dtype in received} == {torch.int64}
    assert all(worker_id == where for worker_id, where in masked_where)  # masking ran inside the worker itself


def test_dropouts_within_the_threshold_are_recovered():
    _, strategy = _fit(secure_aggregation=SecureAggregationConfig(seed=1, threshold=3), dropout_rate=0.3)
    summary = strategy.worker_summary()
    assert strategy.round_index == 3 and sum(s["dropped"] for s in summary.values()) > 0


@pytest.mark.parametrize("aggregation", ["fedmedian", "krum", "fedtrimmedavg"])
def test_secure_aggregation_refuses_non_sum_aggregators_naming_both(aggregation):
    with pytest.raises(
        FederatedConfigError, match=rf"secure_aggregation=True cannot be combined with aggregation='{aggregation}'"
    ):
        FederatedStrategy(aggregation=aggregation, secure_aggregation=True)


def test_secure_aggregation_needs_fedavg_mode():
    with pytest.raises(FederatedConfigError, match="needs mode='fedavg'"):
        FederatedStrategy(mode="follow", secure_aggregation=True)


def test_an_explicit_wrapper_and_the_flag_agree():
    a, _ = _fit(aggregation=SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0)))
    b, _ = _fit(secure_aggregation=SecureAggregationConfig(seed=0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
