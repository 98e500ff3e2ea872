"""``lightning-fed``: LightningCLI for federated runs (``lightning-fed fit --config ...``, ``python -m lightning_fed``).

Any LightningModule and LightningDataModule can be named in the config (``class_path``); the Trainer's strategy is
``federated`` by default, and ``--trainer.strategy lightning_fed.FederatedStrategy --trainer.strategy.mode follow``
(or a ``strategy:`` block in YAML) sets its arguments. A user's own ``LightningCLI`` works the same way once
``lightning_fed`` is imported.

Example:
    >>> from lightning_fed.cli import main
    >>> main(["fit", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import lightning_fed  # noqa: F401  (registers the "federated" strategies)


class FederatedCLI(LightningCLI):
    """LightningCLI with ``strategy="federated"`` as the Trainer default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        trainer_defaults = {"strategy": "federated", "devices": 1, **kwargs.pop("trainer_defaults", {})}
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)


def main(args: list[str] | None = None) -> FederatedCLI:
    """The console script ``lightning-fed``."""
    return FederatedCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
    )


if __name__ == "__main__":
    main()
