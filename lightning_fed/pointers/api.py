"""``send`` and ``get`` as plain functions: the whole pointer API without the hook.

Example:
    >>> import torch, lightning_fed as sy
    >>> clinic = sy.VirtualWorker(id="clinic")
    >>> x = torch.tensor([2.4, 6.2], requires_grad=True)
    >>> ptr = sy.send(x, clinic)
    >>> loss = (ptr - sy.send(torch.tensor([2.0, 6.0]), clinic)).abs().sum()
    >>> loss.backward()
    >>> back = sy.get(ptr)
    >>> back.grad
    tensor([1., 1.])
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from lightning_fed.pointers.module import get_module, send_module
from lightning_fed.pointers.pointer_tensor import PointerTensor, check_worker
from lightning_fed.workers.base import BaseWorker, me
from lightning_fed.workers.messages import ObjectMessage
from lightning_fed.workers.store import new_object_id

T = TypeVar("T")


def send_tensor(tensor: torch.Tensor, worker: BaseWorker) -> PointerTensor:
    """Give ``worker`` its own copy of ``tensor`` (values, ``requires_grad`` and ``.grad``); return a pointer."""
    check_worker(worker)
    with torch.no_grad():
        copy = tensor.detach().clone()
        if tensor.grad is not None:
            copy.grad = tensor.grad.detach().clone()
    if tensor.requires_grad:
        copy.requires_grad_(True)
    obj_id = new_object_id()
    me._send(ObjectMessage(obj_id, copy), worker)
    return PointerTensor._make(worker, obj_id, copy.shape, copy.dtype, copy.device, me)


def send(obj: Any, worker: BaseWorker) -> Any:
    """Send a tensor (returns a pointer), a pointer (moves it) or a module (in place; returns the module)."""
    check_worker(worker)
    if isinstance(obj, PointerTensor):
        return obj.move(worker)
    if isinstance(obj, torch.Tensor):
        if worker is me:
            return obj
        return send_tensor(obj, worker)
    if isinstance(obj, nn.Module):
        return send_module(obj, worker)
    raise TypeError(
        f"send() takes a tensor, a pointer or an nn.Module, got {type(obj).__name__}: "
        "send its tensors one by one, or wrap them in a module."
    )


def get(obj: T) -> T | torch.Tensor:
    """Bring back a pointer's tensor, or a sent module's tensors (in place). Local tensors are returned as they are."""
    if isinstance(obj, PointerTensor):
        return obj.get()
    if isinstance(obj, nn.Module):
        return get_module(obj)
    if isinstance(obj, torch.Tensor):
        return obj
    raise TypeError(f"get() takes a pointer or an nn.Module, got {type(obj).__name__}.")
