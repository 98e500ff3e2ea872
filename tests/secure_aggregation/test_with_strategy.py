"""``SecureAggregator`` passed to today's ``FederatedStrategy`` as its aggregator (full participation, no wiring)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.aggregation import FedAvg
from lightning_fed.secure_aggregation import SecAggServer, SecureAggregationConfig, SecureAggregator
from lightning_fed.testing import BoringClassifier


def fit(aggregation: object, accelerator: str = "cpu") -> list[torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = FederatedDataModule.from_datasets(
        TensorDataset(torch.randn(48, 4, generator=g), torch.arange(48) % 2), workers=3, batch_size=8
    )
    model = BoringClassifier()
    seen: set[str] = set()
    spy = pl.Callback()
    spy.on_train_epoch_end = lambda trainer, module: seen.add(module.device.type)  # type: ignore[method-assign]
    trainer = pl.Trainer(
        strategy=FederatedStrategy(aggregation=aggregation), max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator=accelerator, devices=1, callbacks=[spy],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert trainer.strategy.round_index == 2
    assert seen == {"cuda" if accelerator == "gpu" else "cpu"}  # where it trained (Lightning moves it home after)
    return [p.detach().cpu().clone() for p in model.parameters()]


def test_two_rounds_match_fedavg_and_the_server_saw_only_masked_vectors(monkeypatch: object) -> None:
    seen: list[torch.dtype] = []
    receive = SecAggServer.receive_masked

    def spy(self: SecAggServer, worker_id: object, y: torch.Tensor) -> None:
        seen.append(y.dtype)
        receive(self, worker_id, y)

    monkeypatch.setattr(SecAggServer, "receive_masked", spy)  # type: ignore[attr-defined]
    plain = fit("fedavg")
    secure = fit(SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0)))
    assert seen == [torch.int64] * 6  # 3 workers x 2 rounds
    assert all(torch.allclose(s, p, atol=1e-6) for s, p in zip(secure, plain))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_the_masked_sum_matches_fedavg(monkeypatch: object) -> None:
    seen: list[tuple[torch.dtype, str]] = []
    receive = SecAggServer.receive_masked

    def spy(self: SecAggServer, worker_id: object, y: torch.Tensor) -> None:
        seen.append((y.dtype, y.device.type))
        receive(self, worker_id, y)

    monkeypatch.setattr(SecAggServer, "receive_masked", spy)  # type: ignore[attr-defined]
    plain = fit("fedavg", accelerator="gpu")
    secure = fit(SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0)), accelerator="gpu")
    assert seen == [(torch.int64, "cpu")] * 6  # masked on the host: the masks come from ChaCha20 there
    assert all(torch.allclose(s, p, atol=1e-6) for s, p in zip(secure, plain))
