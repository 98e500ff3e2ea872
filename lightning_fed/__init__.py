"""lightning_fed: federated learning for PyTorch Lightning.

The PySyft 0.2 pointer API on torch 2.x (``import lightning_fed as sy``: ``sy.TorchHook``, ``sy.VirtualWorker``,
``send``/``get``, pointer arithmetic and ``backward()`` at the worker) and, on top of it, federated data and a
Lightning ``FederatedStrategy``. Importing the package patches nothing.
"""

from lightning_fed import smpc
from lightning_fed.data import BaseDataset, FederatedDataLoader, FederatedDataModule, FederatedDataset, federate
from lightning_fed.exceptions import (
    FederatedConfigError,
    LightningFedError,
    NotAWorkerError,
    PermissionDeniedError,
    PointerError,
    WorkerError,
)
from lightning_fed.pointers import PointerTensor, TorchHook, get, send
from lightning_fed.smpc import AdditiveSharingTensor, FixedPrecisionTensor
from lightning_fed.strategies import FederatedStrategy
from lightning_fed.workers import BaseWorker, PrivateGridNetwork, VirtualWorker, me

__version__ = "0.1.0.dev0"
local_worker = me

__all__ = [
    "AdditiveSharingTensor",
    "BaseDataset",
    "BaseWorker",
    "FederatedConfigError",
    "FederatedDataLoader",
    "FederatedDataModule",
    "FederatedDataset",
    "FederatedStrategy",
    "FixedPrecisionTensor",
    "LightningFedError",
    "NotAWorkerError",
    "PermissionDeniedError",
    "PointerError",
    "PointerTensor",
    "PrivateGridNetwork",
    "TorchHook",
    "VirtualWorker",
    "WorkerError",
    "federate",
    "get",
    "local_worker",
    "me",
    "send",
    "smpc",
]
