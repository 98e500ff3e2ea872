"""Exact resume and determinism: same seed, same run; stopped after round k and resumed == uninterrupted."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fed import FederatedStrategy
from lightning_fed.strategies.checkpoint import digest, open_worker_states
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

DROPOUT = 0.3  # dropout makes the run depend on the RNG state the checkpoint must carry


def _setup(prefix: str, mode: str = "fedavg"):
    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, lr=0.05, optimizer="momentum", dropout=DROPOUT)
    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, seed=7, prefix=prefix, partition="quantity_skew")
    strategy = FederatedStrategy(mode=mode, clients_per_round=2 if mode == "fedavg" else None)
    return model, data, strategy


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["fedavg", "follow"])
def test_same_seed_gives_bit_identical_runs(mode):
    results = []
    for run in range(2):
        model, data, strategy = _setup(f"r{run}", mode)
        torch.manual_seed(123)
        trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data)
        results.append(_params(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("mode", ["fedavg", "follow"])
def test_resume_from_round_checkpoint_equals_uninterrupted_run(tmp_path, mode):
    model, data, strategy = _setup("w", mode)
    torch.manual_seed(123)
    trainer(max_epochs=4, strategy=strategy).fit(model, datamodule=data)
    uninterrupted = _params(model)

    model, data, strategy = _setup("w", mode)
    torch.manual_seed(123)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(max_epochs=2, strategy=strategy, enable_checkpointing=True, callbacks=[ckpt]).fit(model, datamodule=data)
    stopped = _params(model)
    assert any(not torch.equal(stopped[k], uninterrupted[k]) for k in stopped)

    model, data, strategy = _setup("w", mode)
    torch.manual_seed(999)  # the checkpoint, not this seed, must decide what happens next
    resumed_trainer = trainer(max_epochs=4, strategy=strategy)
    resumed_trainer.fit(model, datamodule=data, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    resumed = _params(model)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), {
        k: (resumed[k].double() - uninterrupted[k].double()).abs().max().item() for k in resumed
    }
    if mode == "fedavg":
        assert resumed_trainer.strategy.round_index == 4
        checkpoint = torch.load(tmp_path / "epoch=1.ckpt", weights_only=False)
        federated = checkpoint["federated"]
        assert federated["round_index"] == 2
        sealed = federated["worker_states"]  # each worker's optimizer state, sealed for it
        assert sealed and set(sealed) <= {"w0", "w1", "w2", "w3"} and "optimizer_states" not in federated
        opened = open_worker_states(sealed, digest(federated["fingerprint"]))
        assert any("momentum_buffer" in entry for s in opened.values() for entry in s["optimizer"][0].values())


class _Scheduled(BoringClassifier):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_resume_continues_each_workers_lr_schedule(tmp_path):
    def run(max_epochs, ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        model = _Scheduled(4, 3, hidden=8)
        data = FedDM(tiny_dataset(60), num_workers=3, batch_size=5, seed=1)
        t = trainer(max_epochs=max_epochs, strategy=FederatedStrategy(clients_per_round=2),
                    enable_checkpointing=bool(callbacks), callbacks=list(callbacks))  # fmt: skip
        t.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return _params(model)

    uninterrupted = run(4)
    run(2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")])
    resumed = run(4, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
