"""``TorchHook``: the opt-in, reversible patch that gives torch objects PySyft 0.2's methods.

``hook = TorchHook(torch)`` adds ``Tensor.send``, ``Module.send/get/move`` and ``Dataset.federate``; ``hook.unhook()``
(or leaving a ``with TorchHook(torch):`` block) removes them again. Creating it twice gives the same hook.
``import lightning_fed`` patches nothing: the functions in :mod:`lightning_fed.pointers.api` work without it.

Example:
    >>> import torch, lightning_fed as sy
    >>> with sy.TorchHook(torch) as hook:
    ...     bob = sy.VirtualWorker(hook, id="bob")
    ...     ptr = torch.tensor([1, 2]).send(bob)
    ...     print(ptr.location.id, hook.local_worker.id)
    bob me
    >>> hasattr(torch.Tensor, "send")
    False
"""

from __future__ import annotations

import copy
import gc
import types
import warnings
import weakref
from collections.abc import Hashable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers import api
from lightning_fed.workers.base import BaseWorker, LocalWorker, me
from lightning_fed.workers.store import seed_object_ids

_MISSING = object()


def _tensor_send(self: torch.Tensor, *workers: BaseWorker, garbage_collect_data: bool = True) -> Any:
    return api.send(self, *workers, garbage_collect_data=garbage_collect_data)


def _module_send(self: nn.Module, *workers: BaseWorker, garbage_collect_data: bool = True) -> nn.Module:
    return api.send(self, *workers, garbage_collect_data=garbage_collect_data)


def _module_get(self: nn.Module) -> nn.Module:
    return api.get(self)


def _module_copy(self: nn.Module) -> nn.Module:
    return copy.deepcopy(self)  # a sent module's pointers copy at their worker (PointerTensor.__deepcopy__)


def _tensor_copy(self: torch.Tensor) -> torch.Tensor:
    return api.copy_tensor(self)


def _tensor_tag(self: torch.Tensor, *tags: str) -> torch.Tensor:
    return api.tag(self, *tags)


def _tensor_describe(self: torch.Tensor, description: str) -> torch.Tensor:
    return api.describe(self, description)


def _dataset_federate(self: Dataset, workers: Any, *args: Any, **kwargs: Any) -> Any:
    from lightning_fed.data.federated import federate  # the data layer sits above the pointers

    return federate(self, workers, *args, **kwargs)


_PATCHES: tuple[tuple[type, str, Any], ...] = (
    (torch.Tensor, "send", _tensor_send),
    (nn.Module, "send", _module_send),
    (nn.Module, "move", _module_send),
    (nn.Module, "get", _module_get),
    (nn.Module, "copy", _module_copy),
    (torch.Tensor, "copy", _tensor_copy),
    (torch.Tensor, "tag", _tensor_tag),
    (torch.Tensor, "describe", _tensor_describe),
    (Dataset, "federate", _dataset_federate),
)


def _smpc_patches() -> tuple[tuple[type, str, Any], ...]:
    from lightning_fed.smpc.hooking import PATCHES  # smpc sits below the pointers: its methods, listed there

    return PATCHES


class TorchHook:
    """Adds PySyft's methods to torch (see the module docstring); holds the workers created with it.

    Args:
        torch_module: the ``torch`` module, as in ``TorchHook(torch)``; optional.
        local_worker: the local worker (default ``me``).
        is_client: accepted for PySyft's signature; the local worker is always a client here (it keeps no objects).
        verbose: workers created with this hook (and the local worker, while hooked) print every message they
            receive: its kind and command, never its values.
        seed: seeds the random object ids, so that a script shows the same ids on every run.

    Creating a hook while one is active returns that hook unchanged (PySyft skipped hooking twice, too).
    """

    _active: ClassVar[TorchHook | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> TorchHook:
        if cls._active is not None:
            return cls._active
        return super().__new__(cls)

    def __init__(
        self,
        torch_module: types.ModuleType | None = None,
        local_worker: LocalWorker | None = None,
        is_client: bool = True,
        verbose: bool = False,
        seed: int | None = None,
    ) -> None:
        if torch_module is not None and torch_module is not torch:  # checked first: also when a hook is active
            raise FederatedConfigError(
                f"TorchHook takes the torch module, got {torch_module!r}: "
                "write `TorchHook(torch)` after `import torch`."
            )
        for name, value in (("is_client", is_client), ("verbose", verbose)):
            if not isinstance(value, bool):
                raise FederatedConfigError(f"`{name}={value!r}` is not valid: pass True or False.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise FederatedConfigError(f"`seed={seed!r}` is not valid: pass an int, or None for random object ids.")
        if getattr(self, "_hooked", False):
            return
        if seed is not None:
            seed_object_ids(seed)
        self.torch = torch
        self.verbose = verbose
        self.local_worker: LocalWorker = local_worker if local_worker is not None else me
        self._local_was_verbose = self.local_worker.verbose
        self.local_worker.verbose = verbose
        self._workers: weakref.WeakValueDictionary[Hashable, BaseWorker] = weakref.WeakValueDictionary()
        self._saved: list[tuple[type, str, Any]] = []
        for owner, name, fn in _PATCHES + _smpc_patches():
            self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
            setattr(owner, name, fn)
        self._hooked = True
        TorchHook._active = self

    @property
    def is_hooked(self) -> bool:
        return self._hooked

    @property
    def workers(self) -> dict[Hashable, BaseWorker]:
        """The live workers created with this hook, by id."""
        return dict(self._workers)

    def unhook(self) -> None:
        """Remove every method this hook added (idempotent)."""
        if not self._hooked:
            return
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:
                if owner.__dict__.get(name) is not None:
                    delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()
        self.local_worker.verbose = self._local_was_verbose
        self._hooked = False
        if TorchHook._active is self:
            TorchHook._active = None

    def __enter__(self) -> TorchHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unhook()

    def _register_worker(self, worker: BaseWorker) -> None:
        if worker.id == self.local_worker.id:
            raise FederatedConfigError(
                f"`id={worker.id!r}` is the local worker's id: choose another id for the {type(worker).__name__}."
            )
        existing = self._workers.get(worker.id)
        if existing is not None and existing is not worker:
            existing = None  # drop our own reference first, or the collection below can never free it
            gc.collect()  # a worker nobody references any more may still await collection
            existing = self._workers.get(worker.id)
        if existing is not None and existing is not worker:  # a notebook cell run again: PySyft replaced it too
            warnings.warn(
                f"a worker with `id={worker.id!r}` already exists under this hook ({existing!r}): it is replaced by "
                "the new one. Pointers made before still reach the old worker and its objects; choose another id to "
                "keep both.",
                UserWarning,
                stacklevel=3,
            )
        self._workers[worker.id] = worker

    def __repr__(self) -> str:
        state = "hooked" if self._hooked else "unhooked"
        return f"<TorchHook {state}, {len(self._workers)} workers>"
