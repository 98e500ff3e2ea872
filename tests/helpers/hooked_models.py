"""Model classes with Lightning transfer hooks, for the deployment tests (a site process imports them by name)."""

from __future__ import annotations

from typing import Any

from lightning_fed.models import MNISTClassifier


class HalvedInputs(MNISTClassifier):
    """``MNISTClassifier`` whose ``on_after_batch_transfer`` unpacks its batch and halves the images."""

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return [images * 0.5, labels]
