"""Handing a sent module's memory to the worker instead of copying it, when nothing else in this process reaches it.

``model.send(worker)`` turns every parameter and buffer *object* into a pointer in place (``torch.utils.swap_tensors``),
so after the send no name, module or optimizer of the sender reaches the values the object held. Copying those values
for the worker then protects nothing, and it costs a read and a write of the whole model at every send: the seed's
loop sends the model at every batch. A send therefore hands the worker the memory itself when:

- the tensor is a dense ``torch.Tensor`` or ``nn.Parameter`` whose memory torch allocated (not a NumPy array's, a
  file's, a DLPack producer's, nor shared memory that another process may map);
- no other tensor shares that memory (a view, a ``.data`` alias, a slice);
- for a gradient, which is not swapped, also no Python name or container holds the gradient object (its parameter
  alone does).

Otherwise the worker gets a copy, as before. Either way nothing outside the worker can read or change what it holds.

Example:
    >>> import torch
    >>> param = torch.nn.Parameter(torch.zeros(3))
    >>> handed_over(param).data_ptr() == param.data_ptr()  # nothing else holds the memory: handed over
    True
    >>> alias = param.data
    >>> handed_over(param).data_ptr() == param.data_ptr()  # `alias` would see the worker's writes: a copy
    False
"""

from __future__ import annotations

import sys

import torch

from lightning_fed._compat.torch import storage_holders, tensor_holders


def unshared_memory(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` alone holds its memory, which torch allocated (see the module's conditions)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.layout is not torch.strided:
        return False
    storage = tensor.untyped_storage()
    if not storage.resizable() or storage.is_shared():  # NumPy, files, DLPack, mmap; shared with other processes
        return False
    return storage_holders(tensor) == 1


def handed_over(tensor: torch.Tensor) -> torch.Tensor:
    """What a send gives the worker for ``tensor``, detached: the memory itself when :func:`unshared_memory`, else a
    copy. The caller turns ``tensor``'s object into a pointer at once, so nothing of the sender reaches either."""
    with torch.no_grad():
        return tensor.detach() if unshared_memory(tensor) else tensor.detach().clone()


def _torch_refs_on_grad() -> int | None:
    """The references torch itself keeps on a parameter's gradient object (measured once), or ``None`` when counting
    references does not tell whether a name holds a gradient (then gradients are always copied)."""
    param = torch.zeros(1, requires_grad=True)
    (param * 1).sum().backward()
    grad = param.grad
    alone = sys.getrefcount(grad) - 2  # less `grad` and getrefcount's argument
    held = [grad]
    with_name = sys.getrefcount(grad) - 2
    del held
    return alone if with_name == alone + 1 and tensor_holders(grad) == 2 else None


_TORCH_REFS_ON_GRAD = _torch_refs_on_grad()


def sole_grad(param: torch.Tensor) -> torch.Tensor | None:
    """``param``'s gradient, detached, when only ``param`` holds it and :func:`unshared_memory`: a send may hand its
    memory to the worker. ``None`` when there is no gradient or anything else could reach it.

    Example:
        >>> param = torch.nn.Parameter(torch.zeros(2)); param.grad = torch.ones(2)
        >>> sole_grad(param) is not None
        True
        >>> held = param.grad
        >>> sole_grad(param) is None  # `held` would see the worker's writes
        True
    """
    grad = param.grad
    if grad is None or _TORCH_REFS_ON_GRAD is None or grad.requires_grad:
        return None
    # the references to the gradient object: torch's own, `grad` here and getrefcount's argument
    if sys.getrefcount(grad) - 2 != _TORCH_REFS_ON_GRAD or tensor_holders(grad) != 2 or not unshared_memory(grad):
        return None
    return grad.detach()
