"""Resuming from a checkpoint taken in the middle of a round continues that round exactly: for a checkpoint at every
step of a 2-round run, the resumed run ends bit for bit where the uninterrupted one does (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fed import FederatedStrategy
from lightning_fed._compat import lightning as compat
from lightning_fed.aggregation import SCAFFOLD, FedAdam, FedMedian
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

ROUNDS, STEPS = 2, 6  # 2 workers x 3 batches a round

pytestmark = pytest.mark.skipif(
    compat.release_of(lightning.__version__) < (2, 5),
    reason="Lightning < 2.5 re-runs the batch a batch-end checkpoint was saved in; such checkpoints are refused there "
    "(tested in test_lightning_behaviours)",
)


class _Scheduled(BoringClassifier):
    """Momentum SGD with a per-worker step LR schedule and dropout: optimizer state, schedules and RNG all matter."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(kwargs: dict[str, Any], ckpt_path: Path | None = None, save_to: Path | None = None,
         accelerator: str = "auto", dropout: float = 0.2) -> torch.nn.Module:  # fmt: skip
    torch.manual_seed(0)
    fed = FedDM(tiny_dataset(24), num_workers=2, batch_size=4)
    model = _Scheduled(num_classes=3, hidden=8, dropout=dropout)
    callbacks = [] if save_to is None else [
        ModelCheckpoint(dirpath=save_to, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    ]  # fmt: skip
    tr = trainer(
        max_epochs=ROUNDS, strategy=FederatedStrategy(**kwargs), enable_checkpointing=save_to is not None,
        callbacks=callbacks, deterministic=False, accelerator=accelerator, devices=1,
    )  # fmt: skip
    tr.fit(model, datamodule=fed, ckpt_path=ckpt_path)
    assert tr.strategy.round_index == ROUNDS
    return model


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


CONFIGS = {  # functions: every run gets fresh aggregator objects
    "fedavg": lambda: {},
    "fedadam": lambda: {"aggregation": FedAdam(server_lr=0.05)},
    "scaffold": lambda: {"aggregation": SCAFFOLD()},
    "median": lambda: {"aggregation": FedMedian()},
    "client-dp": lambda: {"privacy": DPConfig(noise_multiplier=0.5, clip_norm=1.0, target_epsilon=None)},
    "failures": lambda: {"dropout_rate": 0.3, "deadline_steps": 2, "straggler_policy": "partial", "seed": 0},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_from_a_checkpoint_at_every_step_equals_the_uninterrupted_run(tmp_path, name):
    config = CONFIGS[name]
    reference = _fit(config())
    saved = _fit(config(), save_to=tmp_path)
    assert _equal(saved, reference)  # saving checkpoints changes nothing
    for step in range(1, ROUNDS * STEPS):
        resumed = _fit(config(), ckpt_path=tmp_path / f"step={step}.ckpt")
        assert _equal(resumed, reference), f"resumed from step {step}"


def test_a_mid_round_checkpoint_of_secure_aggregation_is_refused_for_resuming(tmp_path):
    kwargs = {"secure_aggregation": SecureAggregationConfig(seed=0)}  # seeded keys: two runs are equal
    with pytest.warns(UserWarning, match=r"middle of federated round 0 \(step 2 of 6\) with SequentialBackend"):
        _fit(kwargs, save_to=tmp_path)
    with pytest.raises(FederatedConfigError, match=r"middle of federated round 0 \(step 2 of 6\).*Resume from a"):
        _fit(kwargs, ckpt_path=tmp_path / "step=2.ckpt")
    assert _equal(_fit(kwargs, ckpt_path=tmp_path / "step=6.ckpt"), _fit(kwargs))  # a round's end resumes exactly


def _close(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> bool:
    return all(
        torch.allclose(x.cpu(), y.cpu(), atol=atol) for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fedavg", "fedadam", "median", "client-dp"])
def test_on_the_gpu_a_mid_round_checkpoint_resumes_exactly(tmp_path, name):
    config = CONFIGS[name]
    reference = _fit(config(), accelerator="gpu")
    _fit(config(), save_to=tmp_path, accelerator="gpu")
    for step in (2, 5, 8):  # the partial sums, the server's state and each worker's sealed state saved on the GPU
        assert _close(_fit(config(), ckpt_path=tmp_path / f"step={step}.ckpt", accelerator="gpu"), reference, 1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fedavg", "fedadam", "median"])
def test_a_mid_round_checkpoint_saved_on_the_gpu_resumes_on_the_cpu(tmp_path, name):
    config = CONFIGS[name]  # no dropout: the GPU and the CPU draw different masks
    reference = _fit(config(), accelerator="gpu", dropout=0.0)
    _fit(config(), save_to=tmp_path, accelerator="gpu", dropout=0.0)
    resumed = _fit(config(), ckpt_path=tmp_path / "step=5.ckpt", accelerator="cpu", dropout=0.0)
    assert _close(resumed, reference, 1e-5)
