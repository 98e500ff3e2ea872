"""lightning_fed: federated learning for PyTorch Lightning.

The PySyft 0.2 pointer API on torch 2.x (``import lightning_fed as sy``: ``sy.TorchHook``, ``sy.VirtualWorker``,
``send``/``get``, pointer arithmetic and ``backward()`` at the worker) and, on top of it, federated data and a
Lightning ``FederatedStrategy``. Importing the package patches nothing.
"""

from typing import Any

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

_NOT_OFFERED = {
    "func2plan": "a worker runs torch functions from an allowlist and the plans its owner installed, never code sent "
    "to it",
    "Plan": "a worker runs torch functions from an allowlist and the plans its owner installed, never code sent to it",
    "create_sandbox": "create the workers (`sy.VirtualWorker(hook, id='bob')`) and tag your data yourself",
    "MultiPointerTensor": "send to each worker in turn (`[x.send(w) for w in workers]`) and keep the list of pointers",
}


def __getattr__(name: str) -> Any:
    """PySyft 0.2 names that are not offered raise an ``AttributeError`` that says so."""
    reason = _NOT_OFFERED.get(name)
    if reason is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise AttributeError(
        f"lightning_fed.{name} (PySyft 0.2) is not offered: {reason}. README.md, section 'From PySyft 0.2', lists "
        "what is not supported."
    )


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
