"""The reference LightningModule refuses a bad option by name, with the values it accepts."""

from __future__ import annotations

import pytest

from lightning_fed.models import MNISTClassifier


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "rmsprop"}, r"`optimizer='rmsprop'` is not valid: choose 'sgd' or 'adam'"),
        ({"architecture": "resnet"}, r"`architecture='resnet'` is not valid: choose one of \['dp_cnn', 'mcmahan_2nn'"),
        ({"lr": -1.0}, r"`lr=-1.0` is not valid: pass a learning rate > 0"),
        ({"lr": float("nan")}, r"`lr=nan` is not valid"),
        ({"momentum": -0.5}, r"`momentum=-0.5` is not valid: pass a number >= 0"),
        ({"lr_milestones": (4, 2)}, r"`lr_milestones=\(4, 2\)` is not valid: pass increasing epoch numbers >= 1"),
        ({"lr_milestones": (0,)}, r"`lr_milestones=\(0,\)` is not valid"),
        ({"lr_milestones": (3, 3)}, r"`lr_milestones=\(3, 3\)` is not valid"),
        ({"lr_milestones": 4}, r"`lr_milestones=4` is not valid: pass increasing epoch numbers >= 1, e.g. \(4,\)"),
        ({"lr_milestones": [2.5]}, r"`lr_milestones=\[2.5\]` is not valid"),
        ({"lr_gamma": 0.0}, r"`lr_gamma=0.0` is not valid: pass a factor in \(0, 1\]"),
        ({"lr_gamma": 2.0}, r"`lr_gamma=2.0` is not valid"),
    ],
)
def test_a_bad_option_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTClassifier(**kwargs)


@pytest.mark.parametrize("labelled", [True, False])
def test_predict_gives_log_probabilities_of_labelled_and_plain_batches(labelled):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    dataset = TensorDataset(images, labels) if labelled else TensorDataset(images)
    loader = DataLoader(
        dataset, batch_size=4, collate_fn=None if labelled else lambda rows: torch.stack([row[0] for row in rows])
    )
    model = MNISTClassifier()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = torch.cat(trainer.predict(model, dataloaders=loader))
    assert out.shape == (6, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(6), atol=1e-5)
    model.eval()
    with torch.no_grad():  # the same batches as predict's: a batch's size may change the CPU's kernels
        expected = torch.cat([model(images[:4]), model(images[4:])])
    # not bit for bit: on an AVX-512 host the outputs differed in the last bits within a full-suite run (never alone)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)


def test_lr_milestones_lower_the_rate_once_a_round_at_every_worker():
    """Under FedAvg an epoch is a round: each round's local steps, at every worker, use the rate of that round."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import TensorDataset

    from lightning_fed import FederatedStrategy
    from tests.strategies.helpers import FedDM

    seen: list[tuple[int, str, float]] = []

    class Recording(MNISTClassifier):
        def training_step(self, batch, batch_idx):
            from lightning_fed.workers import current_worker

            seen.append((self.current_epoch, current_worker().id, self.optimizers().param_groups[0]["lr"]))
            return super().training_step(batch, batch_idx)

    g = torch.Generator().manual_seed(0)
    data = FedDM(TensorDataset(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)),
                 num_workers=2, batch_size=8)  # fmt: skip
    model = Recording(lr=0.1, momentum=0.9, lr_milestones=(1, 3), lr_gamma=0.5)
    trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=data)
    rates = {epoch: round(lr, 6) for epoch, _, lr in seen}
    assert rates == {0: 0.1, 1: 0.05, 2: 0.05, 3: 0.025}
    assert {worker for _, worker, _ in seen} == {"w0", "w1"}
    assert all(lr == rates[epoch] for epoch, _, lr in seen)  # both workers of a round at its rate
