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

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers.module import get_module, send_module
from lightning_fed.pointers.pointer_tensor import PointerTensor, _metadata, check_worker
from lightning_fed.pointers.pysyft_methods import check_gc_flag
from lightning_fed.pointers.transfer import send_tensor
from lightning_fed.workers.base import BaseWorker, me

T = TypeVar("T")


def copy_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """PySyft's ``tensor.copy()``: an independent copy (``clone``, ``requires_grad`` and tags kept); a pointer's
    copy is a pointer to a new copy at the same worker.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0])
        >>> y = copy_tensor(x)
        >>> y.add_(1), x
        (tensor([2., 3.]), tensor([1., 2.]))
    """
    if isinstance(tensor, PointerTensor):
        return tensor.copy()
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"copy_tensor() takes a tensor, got {type(tensor).__name__}.")
    copy = tensor.detach().clone().requires_grad_(tensor.requires_grad)
    copy.__dict__.update({key: set(value) if key == "tags" else value for key, value in _metadata(tensor).items()})
    return copy


def tag(tensor: torch.Tensor, *tags: str) -> torch.Tensor:
    """Add ``tags`` (strings such as ``"#radio"``) to ``tensor``; returns it. They travel with ``send`` and let the
    worker's ``search()`` find it (PySyft's ``tensor.tag(...)``).

    Example:
        >>> import torch, lightning_fed as sy
        >>> bob = sy.VirtualWorker(id="bob")
        >>> x = sy.send(tag(torch.tensor([1, 2]), "#radio", "#hospital1"), bob)
        >>> [sorted(p.tags) for p in bob.search("#radio")]
        [['#hospital1', '#radio']]
    """
    _check_tensor_metadata(tensor, "tag")
    for item in tags:
        if not isinstance(item, str):
            raise FederatedConfigError(
                f"tag {item!r} ({type(item).__name__}) is not valid: tags are strings, e.g. '#radio'."
            )
    tensor.tags = set(tensor.__dict__.get("tags") or ()) | set(tags)
    return tensor


def describe(tensor: torch.Tensor, description: str) -> torch.Tensor:
    """Give ``tensor`` a description (searchable by any of its words); returns it (PySyft's ``.describe(...)``)."""
    _check_tensor_metadata(tensor, "describe")
    if not isinstance(description, str):
        raise FederatedConfigError(
            f"`description={description!r}` ({type(description).__name__}) is not valid: pass a string."
        )
    tensor.description = description
    return tensor


def _check_tensor_metadata(tensor: Any, what: str) -> None:
    if isinstance(tensor, PointerTensor):
        getattr(tensor, what)()  # raises, saying to tag before sending
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what}() takes a tensor, got {type(tensor).__name__}.")


def send(obj: Any, *workers: BaseWorker, garbage_collect_data: bool = True) -> Any:
    """Send a tensor (returns a pointer), a pointer (returns a pointer to it at the worker: a chain, the data stays;
    ``ptr.move(worker)`` moves the data) or a module (in place; returns the module) to one worker.

    With ``garbage_collect_data=False`` (PySyft's option), dropping the pointers leaves the objects at the worker.
    """
    worker = _one_worker(obj, workers)
    check_gc_flag(garbage_collect_data)
    if isinstance(obj, PointerTensor):
        chained = obj.send(worker)
        if chained is not obj:
            chained.garbage_collect_data = garbage_collect_data
        return chained
    if isinstance(obj, torch.Tensor):
        if worker is me:
            return obj
        return send_tensor(obj, worker, garbage_collect_data)
    if isinstance(obj, nn.Module):
        return send_module(obj, worker, garbage_collect_data)
    raise TypeError(
        f"send() takes a tensor, a pointer or an nn.Module, got {type(obj).__name__}: "
        "send its tensors one by one, or wrap them in a module."
    )


def _one_worker(obj: Any, workers: tuple[Any, ...]) -> BaseWorker:
    if len(workers) == 1:
        return check_worker(workers[0])
    if not workers:
        raise FederatedConfigError("send() needs a worker: `x.send(bob)` or `lightning_fed.send(x, bob)`.")
    ids = [getattr(w, "id", w) for w in workers]
    what = "model" if isinstance(obj, nn.Module) else "tensor"
    fix = "[model.copy().send(w) for w in workers]" if what == "model" else "[x.send(w) for w in workers]"
    raise FederatedConfigError(
        f"send() to several workers {ids} is not offered: PySyft 0.2 returned a MultiPointerTensor, which "
        f"lightning_fed does not have. Send the {what} to each worker in turn, e.g. `{fix}`, and keep the list."
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
