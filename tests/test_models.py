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
    assert torch.equal(out, model(images).detach())
