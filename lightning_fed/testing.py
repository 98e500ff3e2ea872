"""Small LightningModules for examples, doctests and tests: ordinary Lightning code, nothing federated in them.

Example:
    >>> import torch
    >>> model = BoringClassifier(in_features=4, num_classes=3)
    >>> model(torch.randn(2, 4)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override


class BoringClassifier(pl.LightningModule):
    """A linear (or small MLP) classifier with SGD or Adam and torchmetrics accuracy for validation and test.

    Args:
        in_features: input size.
        num_classes: output classes.
        hidden: hidden width; 0 for a single linear layer.
        lr: learning rate.
        optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9) or ``"adam"``.
        dropout: dropout probability before the last layer (0 disables it).
        batch_norm: put a BatchNorm1d after the hidden layer.
    """

    def __init__(
        self,
        in_features: int = 4,
        num_classes: int = 2,
        hidden: int = 0,
        lr: float = 0.1,
        optimizer: str = "sgd",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        if hidden:
            layers += [nn.Linear(in_features, hidden)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            width = hidden
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        name = self.hparams.optimizer
        if name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        momentum = 0.9 if name == "momentum" else 0.0
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=momentum)
