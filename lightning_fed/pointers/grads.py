"""``ptr.grad`` without a round trip each time: a pointer keeps what its last ``.grad`` read (or write) returned.

An optimizer reads ``p.grad`` several times per parameter and step (``zero_grad`` once, ``SGD`` three times); on a
pointer each read used to be a message to the worker that made a new pointer, and dropping that pointer another
message. A pointer now keeps the answer, a pointer to the worker's gradient or ``None``, together with the
:mod:`grad epoch <lightning_fed.workers.epoch>` it was true at, and answers later reads from it while the epoch is
unchanged (no ``backward()``, ``.grad`` assignment, session, move or other command that could change it, at any
worker of this process) and the kept pointer is still live. So ``p.grad is p.grad``, as for a local tensor.

Only pointers to workers that answer in this process through :meth:`BaseWorker._recv
<lightning_fed.workers.BaseWorker._recv>` keep anything (a ``VirtualWorker``); everything else asks every time.
Nothing about the worker's checks changes: a read that is not answered from the pointer is the same command as
before, run and labelled by the worker as before, and a kept answer is a pointer, which carries no values.

A module sent to such a worker sends each parameter's gradient to be kept aside there until something could see it
(:mod:`lightning_fed.workers.outbox`). While it is, ``p.grad`` answers with a pointer whose id the gradient will be
stored under, and ``p.grad = None`` (an optimizer's ``zero_grad`` right after ``model.send``) drops it unseen.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob = sy.VirtualWorker(id="bob-grads")
    >>> w = sy.send(torch.ones(2, requires_grad=True), bob)
    >>> (w * 3).sum().backward()
    >>> w.grad is w.grad, len(bob.objects)  # w, and its gradient (one pointer to it, kept by w)
    (True, 2)
    >>> w.grad = None
    >>> w.grad is None, len(bob.objects)
    (True, 1)
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_fed.pointers.pointer_tensor import _LIVE, _LOCAL_FUNCTIONS, PointerTensor, remote_call
from lightning_fed.workers.base import BaseWorker
from lightning_fed.workers.epoch import EPOCH
from lightning_fed.workers.messages import DeferredGradMessage
from lightning_fed.workers.outbox import PENDING, GradDelivery
from lightning_fed.workers.store import new_object_id

_GRAD_GET = torch.Tensor.grad.__get__
_GRAD_SET = torch.Tensor.grad.__set__
_KEPT = "_kept_grad"
_DELIVERY = "_grad_delivery"


def answers_here(worker: BaseWorker) -> bool:
    """Whether ``worker`` answers messages in this process through ``BaseWorker._recv`` (so it moves the epoch)."""
    return type(worker)._recv is BaseWorker._recv


def can_defer_grad(grad: torch.Tensor, worker: BaseWorker) -> bool:
    """Whether ``grad`` may travel kept aside (:func:`defer_grad`): a dense plain tensor outside any autograd graph,
    going to a worker that answers in this process."""
    plain = type(grad) is torch.Tensor and grad.layout is torch.strided and not grad.requires_grad
    return plain and answers_here(worker)


def defer_grad(ptr: PointerTensor, grad: torch.Tensor, pooled: bool = True) -> None:
    """Send ``grad``, the gradient of the tensor ``ptr`` now points to, to be kept aside at its worker: a copy from
    :meth:`SnapshotPool.copy_of <lightning_fed.workers.outbox.SnapshotPool.copy_of>` (``pooled``), or the gradient's
    own memory handed over (:mod:`lightning_fed.pointers.handover`)."""
    message = DeferredGradMessage(ptr.id_at_location, grad, pooled)
    ptr.__dict__[_DELIVERY] = ptr.owner._send(message, ptr.location)


def _kept_aside(ptr: PointerTensor, delivery: GradDelivery) -> PointerTensor:
    """``ptr.grad`` while the gradient is kept aside: a pointer under whose id the worker will store it."""
    kept = ptr.__dict__.get(_KEPT)
    if kept is not None and kept[1] is not None and kept[1].id_at_location == delivery.grad_id:
        return kept[1]
    grad = delivery.grad
    value = PointerTensor._make(ptr.location, new_object_id(), grad.shape, grad.dtype, grad.device, ptr.owner)
    delivery.name(value.id_at_location)
    ptr.__dict__[_KEPT] = (EPOCH.value, value)
    return value


def read_grad(ptr: PointerTensor) -> PointerTensor | None:
    """``ptr.grad``: the kept answer while it is still true, else the worker's (then kept)."""
    delivery = ptr.__dict__.get(_DELIVERY)
    if delivery is not None:
        if delivery.state is PENDING and ptr._state is _LIVE:
            return _kept_aside(ptr, delivery)
        del ptr.__dict__[_DELIVERY]
    epoch = EPOCH.value
    kept = ptr.__dict__.get(_KEPT)
    if kept is not None and kept[0] == epoch and ptr._state is _LIVE:
        value = kept[1]
        if value is None or value._state is _LIVE:
            return value
    value = remote_call(_GRAD_GET, (ptr,), None)
    if EPOCH.value == epoch and answers_here(ptr.location) and (value is None or type(value) is PointerTensor):
        ptr.__dict__[_KEPT] = (epoch, value)
    else:
        ptr.__dict__.pop(_KEPT, None)
    return value


def write_grad(ptr: PointerTensor, value: Any) -> None:
    """``ptr.grad = value`` at the worker; after ``ptr.grad = None`` the pointer knows its gradient is ``None``.

    ``None`` for a gradient kept aside that no pointer stands for any more (the kept one, dropped first, was the last)
    withdraws it without a message: nothing at the worker saw it.
    """
    ptr.__dict__.pop(_KEPT, None)
    delivery = ptr.__dict__.get(_DELIVERY)
    unseen = delivery is not None and delivery.state is PENDING and delivery.grad_id is None
    if value is None and unseen and ptr._state is _LIVE:
        delivery.drop()
        ptr.__dict__[_KEPT] = (EPOCH.value, None)
        return
    remote_call(_GRAD_SET, (ptr, value), None)
    if value is None and answers_here(ptr.location):
        ptr.__dict__[_KEPT] = (EPOCH.value, None)


_LOCAL_FUNCTIONS[_GRAD_GET] = read_grad
_LOCAL_FUNCTIONS[_GRAD_SET] = write_grad
