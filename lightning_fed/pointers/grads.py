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

_GRAD_GET = torch.Tensor.grad.__get__
_GRAD_SET = torch.Tensor.grad.__set__
_KEPT = "_kept_grad"


def answers_here(worker: BaseWorker) -> bool:
    """Whether ``worker`` answers messages in this process through ``BaseWorker._recv`` (so it moves the epoch)."""
    return type(worker)._recv is BaseWorker._recv


def read_grad(ptr: PointerTensor) -> PointerTensor | None:
    """``ptr.grad``: the kept answer while it is still true, else the worker's (then kept)."""
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
    """``ptr.grad = value`` at the worker; after ``ptr.grad = None`` the pointer knows its gradient is ``None``."""
    ptr.__dict__.pop(_KEPT, None)
    remote_call(_GRAD_SET, (ptr, value), None)
    if value is None and answers_here(ptr.location):
        ptr.__dict__[_KEPT] = (EPOCH.value, None)


_LOCAL_FUNCTIONS[_GRAD_GET] = read_grad
_LOCAL_FUNCTIONS[_GRAD_SET] = write_grad
