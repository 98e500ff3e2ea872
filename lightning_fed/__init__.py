"""lightning_fed: federated learning for PyTorch Lightning."""

from lightning_fed.exceptions import (
    FederatedConfigError,
    LightningFedError,
    PermissionDeniedError,
    PointerError,
    WorkerError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "FederatedConfigError",
    "LightningFedError",
    "PermissionDeniedError",
    "PointerError",
    "WorkerError",
]
