"""Handing a sent module's memory to the worker instead of copying it, when nothing else in this process reaches it;
and, when the module comes home, leaving the worker nothing of that memory.

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

``model.get()`` brings the worker's memory home without a copy; the object the worker held, which its autograd graph
may still hold, then lets go of it (:func:`let_go`), so the worker cannot see what the sender writes there next, and
the next send can hand it over again instead of copying: in the seed's loop, no copy at any step.

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


def _python_refs(tensor: torch.Tensor) -> int:
    """The references Python counts on ``tensor``, less this call's own: its caller's name for it and anything else
    (a list, a store entry, torch's own hold while C++ references the tensor)."""
    return sys.getrefcount(tensor) - 2  # less this function's argument and getrefcount's


def _seen_from_a_call(tensor: torch.Tensor) -> int:
    """:func:`_python_refs` from a function given the tensor by a caller that names it, as :func:`let_go` is (and as
    :func:`sole_grad` asks, naming the gradient itself)."""
    return _python_refs(tensor)


def _refs_on_a_held_tensor() -> tuple[int, int] | None:
    """What :func:`_seen_from_a_call` says of a tensor that one name holds, and how much more while C++ holds it too
    (an autograd graph's ``AccumulateGrad`` node, a parameter's ``.grad`` field: torch then keeps its Python object
    alive with one reference of its own); measured once. ``None``: the counts are not as described, and nothing is
    ever handed over on a count (gradients are copied, nothing is let go)."""
    former = torch.zeros(1, requires_grad=True)
    alone = _seen_from_a_call(former)
    graph = former * 1
    held = _seen_from_a_call(former)
    described = tensor_holders(former) == 2 and held == alone + 1
    del graph
    (former * 1).sum().backward()
    grad = former.grad
    described = described and tensor_holders(grad) == 2 and _seen_from_a_call(grad) == held
    return (alone, held - alone) if described else None


_REFS = _refs_on_a_held_tensor()


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
    if grad is None or _REFS is None or grad.requires_grad:
        return None
    alone, by_torch = _REFS  # `grad` here, and torch's hold for the parameter's .grad field: nothing else
    if _seen_from_a_call(grad) != alone + by_torch or tensor_holders(grad) != 2 or not unshared_memory(grad):
        return None
    return grad.detach()


def let_go(former: torch.Tensor) -> bool:
    """After a module tensor came home, make the object its worker held (``former``) let go of the memory and the
    gradient that the sender now holds; returns whether it did.

    An in-process worker's autograd graph still holds that object after ``get`` (the seed's loop keeps ``loss`` until
    the next batch), and so holds the sender's memory: the worker could see what the sender writes there next, and the
    next ``send`` must copy the memory rather than hand it over. Pointing the object at empty memory ends both. Only
    when nothing but the caller's name (and torch's graph) holds it: the worker's store has forgotten it, and no other
    store entry, list or name of the worker holds it. A later
    backward through that old graph then fails (the parameter has left the worker) instead of writing into the
    sender's gradient.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)
        >>> home = p.detach()
        >>> let_go(p), p.shape, p.grad, home  # nothing else names `p`
        (True, torch.Size([0]), None, tensor([1., 1., 1.]))
        >>> q = torch.ones(2); kept = [q]
        >>> let_go(q), q  # a list names it too
        (False, tensor([1., 1.]))
    """
    if _REFS is None or type(former) not in (torch.Tensor, torch.nn.Parameter):
        return False
    if former.layout is not torch.strided or not former.is_leaf:
        return False
    holders = tensor_holders(former)
    alone, by_torch = _REFS
    # counted from here as _seen_from_a_call counts: the caller's name for `former` and this function's parameter
    if holders is None or _python_refs(former) != alone + (by_torch if holders > 1 else 0):
        return False  # a store entry, a list or a name holds it too
    with torch.no_grad():
        former.grad = None
        former.data = torch.empty(0, dtype=former.dtype, device=former.device)
    return True
