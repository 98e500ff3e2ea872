"""Server optimizer state (FedAdam's m, v) and control variates (SCAFFOLD's c, c_i) survive checkpoints: a run stopped
after round k and resumed equals the uninterrupted run, bit for bit (modelled on tests/strategies/test_resume.py)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fed import FederatedStrategy
from lightning_fed.aggregation import SCAFFOLD, FedAdam
from lightning_fed.strategies.checkpoint import digest, open_worker_states
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

MAKERS = {"fedadam": lambda: FedAdam(server_lr=0.05, tau=1e-3), "scaffold": SCAFFOLD}


def _setup(name: str):
    torch.manual_seed(0)
    model = BoringClassifier(4, 3, hidden=8, lr=0.05, optimizer="sgd", dropout=0.3, batch_norm=True)
    # the same worker ids in every run: SCAFFOLD's c_i are keyed by them
    data = FedDM(
        tiny_dataset(40), num_workers=4, batch_size=5, seed=7, prefix="w", partition="quantity_skew", drop_last=True
    )
    return model, data, FederatedStrategy(aggregation=MAKERS[name](), clients_per_round=2)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_resume_with_server_state_equals_uninterrupted_run(tmp_path, name):
    model, data, strategy = _setup(name)
    torch.manual_seed(123)
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data)
    uninterrupted = _params(model)

    model, data, strategy = _setup(name)
    torch.manual_seed(123)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(max_epochs=2, strategy=strategy, enable_checkpointing=True, callbacks=[ckpt]).fit(model, datamodule=data)

    model, data, strategy = _setup(name)
    torch.manual_seed(999)  # the checkpoint, not this seed, decides what happens next
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    resumed = _params(model)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), {
        k: (resumed[k].double() - uninterrupted[k].double()).abs().max().item() for k in resumed
    }

    federated = torch.load(tmp_path / "epoch=1.ckpt", weights_only=False)["federated"]
    saved = federated["aggregator"]
    if name == "fedadam":
        assert any(m is not None and m.abs().sum() > 0 for m in saved["m"])
        assert any(v is not None and v.abs().sum() > 0 for v in saved["v"])
    else:  # c is the server's; each c_i is its worker's, sealed for it
        assert saved["c"] is not None and "c_i" not in saved
        opened = open_worker_states(federated["worker_states"], digest(federated["fingerprint"]))
        with_ci = {w for w, state in opened.items() if state["aggregator"].get("c_i") is not None}
        assert with_ci and with_ci <= {"w0", "w1", "w2", "w3"}

    # without the server state the resumed run would differ: the test can fail
    model, data, strategy = _setup(name)
    torch.manual_seed(999)
    original = strategy.aggregator.load_state_dict
    strategy.aggregator.load_state_dict = lambda state: original({})  # type: ignore[method-assign]
    trainer(max_epochs=3, strategy=strategy).fit(model, datamodule=data, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert any(not torch.equal(v, uninterrupted[k]) for k, v in _params(model).items())
