"""Reference models: the seed tutorial's CNN as a LightningModule, and McMahan et al. 2017's MNIST CNN and 2NN.

These are ordinary Lightning code, used by the examples, the CLI configs and the benchmarks.

Example:
    >>> import torch
    >>> model = MNISTClassifier()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in McMahanCNN().parameters())
    1663370
    >>> sum(p.numel() for p in DPMNISTCNN().parameters())
    26010
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_fed.exceptions import FederatedConfigError


class SeedCNN(nn.Module):
    """The seed tutorial's ``Net``: two 3x3 convolutions (32, 64), 2x2 max-pool, FC 128, FC 10, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 2)
        return F.log_softmax(self.fc(x.view(-1, 64 * 12 * 12)), dim=1)


class McMahanCNN(nn.Module):
    """McMahan et al. 2017's MNIST CNN: 5x5 conv 32, 2x2 pool, 5x5 conv 64, 2x2 pool, FC 512, FC 10 (1,663,370)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(self.conv(x)), dim=1)


class McMahan2NN(nn.Module):
    """McMahan et al. 2017's 2NN: 784-200-200-10 with ReLU (199,210 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                                 nn.Linear(200, 10))  # fmt: skip

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=1)


class DPMNISTCNN(nn.Module):
    """The small CNN of Opacus' MNIST example, used for its published DP-SGD figures (26,010 parameters).

    8x8 conv 16 (stride 2, padding 3), 2x2 max-pool (stride 1), 4x4 conv 32 (stride 2), 2x2 max-pool (stride 1),
    FC 32, FC 10, ReLU activations; no BatchNorm, so per-sample gradients need nothing special.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.MaxPool2d(2, 1),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(self.conv(x)), dim=1)


_ARCHITECTURES = {"seed_cnn": SeedCNN, "mcmahan_cnn": McMahanCNN, "mcmahan_2nn": McMahan2NN, "dp_cnn": DPMNISTCNN}


class MNISTClassifier(pl.LightningModule):
    """An MNIST classifier: NLL loss, SGD (the seed's optimizer) or Adam, torchmetrics accuracy.

    Args:
        architecture: ``"seed_cnn"`` (the seed tutorial's Net), ``"mcmahan_cnn"``, ``"mcmahan_2nn"`` or ``"dp_cnn"``
            (the CNN of Opacus' MNIST example).
        lr: learning rate (the seed uses 0.01).
        momentum: SGD momentum (the seed uses none).
        optimizer: ``"sgd"`` or ``"adam"``.
        lr_milestones: epochs (rounds, under FedAvg) at which the learning rate is multiplied by ``lr_gamma``, as
            torch's ``MultiStepLR`` does, stepped once an epoch: ``(4,)`` trains epochs 0-3 at ``lr`` and the rest at
            ``lr * lr_gamma``. Empty (the default): a constant rate.
        lr_gamma: the factor of each milestone, in (0, 1].

    Example:
        >>> model = MNISTClassifier(lr=0.02, momentum=0.9, lr_milestones=(4,))
        >>> type(model.configure_optimizers()["lr_scheduler"]["scheduler"]).__name__
        'MultiStepLR'
    """

    def __init__(self, architecture: str = "seed_cnn", lr: float = 0.01, momentum: float = 0.0,
                 optimizer: str = "sgd", lr_milestones: Sequence[int] = (), lr_gamma: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        if architecture not in _ARCHITECTURES:
            raise FederatedConfigError(
                f"`architecture={architecture!r}` is not valid: choose one of {sorted(_ARCHITECTURES)}."
            )
        if optimizer not in ("sgd", "adam"):
            raise FederatedConfigError(f"`optimizer={optimizer!r}` is not valid: choose 'sgd' or 'adam'.")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise FederatedConfigError(f"`lr={lr!r}` is not valid: pass a learning rate > 0, e.g. 0.01.")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < float("inf"):
            raise FederatedConfigError(f"`momentum={momentum!r}` is not valid: pass a number >= 0, e.g. 0.9.")
        milestones = list(lr_milestones) if isinstance(lr_milestones, (list, tuple)) else None
        if (
            milestones is None
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)
            or (milestones != sorted(set(milestones)))
        ):
            raise FederatedConfigError(
                f"`lr_milestones={lr_milestones!r}` is not valid: pass increasing epoch numbers >= 1, e.g. (4,), or () "
                "for a constant learning rate."
            )
        if isinstance(lr_gamma, bool) or not isinstance(lr_gamma, (int, float)) or not 0 < lr_gamma <= 1:
            raise FederatedConfigError(f"`lr_gamma={lr_gamma!r}` is not valid: pass a factor in (0, 1], e.g. 0.1.")
        self.save_hyperparameters()
        self.net = _ARCHITECTURES[architecture]()
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        data, target = batch
        loss = F.nll_loss(self(data), target)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        data, target = batch
        output = self(data)
        self.log("val_loss", F.nll_loss(output, target), prog_bar=True)
        self.val_acc(output, target)
        self.log("val_acc", self.val_acc, prog_bar=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        data, target = batch
        output = self(data)
        self.log("test_loss", F.nll_loss(output, target))
        self.test_acc(output, target)
        self.log("test_acc", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Log-probabilities of the images of ``batch``: ``(images, labels)`` as the test loader gives, or images."""
        data = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(data)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        if self.hparams.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        if not self.hparams.lr_milestones:
            return optimizer
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.lr_milestones), gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
