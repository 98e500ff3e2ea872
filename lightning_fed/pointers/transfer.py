"""Moving a tensor to a worker: the worker gets its own copy, the sender a pointer (used by ``send`` and by modules).

Example:
    >>> import torch, lightning_fed as sy
    >>> bob = sy.VirtualWorker(id="bob-transfer")
    >>> ptr = send_tensor(torch.tensor([1.0, 2.0]), bob)
    >>> ptr.location.id, ptr.get()
    ('bob-transfer', tensor([1., 2.]))
"""

from __future__ import annotations

import torch

from lightning_fed.pointers.pointer_tensor import PointerTensor, _metadata, check_worker
from lightning_fed.pointers.pysyft_methods import check_gc_flag
from lightning_fed.workers.base import BaseWorker, me
from lightning_fed.workers.messages import ObjectMessage
from lightning_fed.workers.store import new_object_id


def send_tensor(tensor: torch.Tensor, worker: BaseWorker, garbage_collect_data: bool = True) -> PointerTensor:
    """Give ``worker`` its own copy of ``tensor`` (values, ``requires_grad`` and ``.grad``); return a pointer.

    With ``garbage_collect_data=False``, dropping the pointer leaves the copy at the worker.
    """
    check_worker(worker)
    check_gc_flag(garbage_collect_data)
    grad = tensor.grad if tensor.is_leaf or tensor.retains_grad else None  # a non-leaf's .grad read warns
    with torch.no_grad():
        copy = tensor.detach().clone()
        if grad is not None:
            copy.grad = grad.detach().clone()
    if tensor.requires_grad:
        copy.requires_grad_(True)
    metadata = _metadata(tensor)  # tags and description travel with the tensor, for the worker's search()
    copy.__dict__.update(metadata)
    obj_id = new_object_id()
    me._send(ObjectMessage(obj_id, copy), worker)
    ptr = PointerTensor._make(worker, obj_id, copy.shape, copy.dtype, copy.device, me, copy.layout)
    ptr.__dict__.update(metadata)
    ptr.garbage_collect_data = garbage_collect_data
    return ptr
