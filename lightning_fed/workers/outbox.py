"""A parameter's gradient that arrived with it, attached when something at the worker could first see it.

``model.send(worker)`` hands an in-process worker each parameter and, in a
:class:`~lightning_fed.workers.messages.DeferredGradMessage`, the gradient the parameter carried. The worker keeps
that gradient aside in its :class:`GradOutbox` and attaches it (``param.grad = grad``) before it answers any message
that could see it:

- a command on the parameter, on its gradient's pointer, on any tensor that requires grad (a gradient is only reached
  through the autograd graph of one), or on anything that is not a plain tensor;
- ``get``, ``move``, plans, sessions, ``search``, datasets, and every look at ``worker.objects``.

A command on tensors that require no grad (the seed's ``data.to(device)``) cannot reach a parameter's gradient, and
storing or deleting other objects does not look at it. So everything observable at the worker is what it would have
been had the gradient been attached on arrival. The common case, ``optimizer.zero_grad()`` right after
``model.send()``, sets a gradient nobody saw to ``None``: it is dropped, and its memory, which only this library ever
held, copies the next send's gradient (:data:`SNAPSHOTS`), instead of the allocator handing out fresh pages each step.
A delivered gradient belongs to the worker and is never reused. (A gradient that only its parameter held is not
copied at all: its memory is handed over, :mod:`lightning_fed.pointers.handover`, and freed if dropped.)

Example:
    >>> import torch
    >>> from lightning_fed.workers import VirtualWorker, me
    >>> from lightning_fed.workers.messages import CommandMessage, DeferredGradMessage, ObjectMessage, ObjectRef
    >>> bob = VirtualWorker(id="bob-outbox")
    >>> me._send(ObjectMessage(1, torch.nn.Parameter(torch.ones(2))), bob)
    >>> delivery = me._send(DeferredGradMessage(1, torch.full((2,), 3.0)), bob)
    >>> delivery.state, bob._store.objects[1].grad  # kept aside
    ('pending', None)
    >>> bob.objects[1].grad, delivery.state  # looking at the store attaches it first
    (tensor([3., 3.]), 'delivered')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightning_fed.workers.epoch import bump_grad_epoch
from lightning_fed.workers.messages import CommandMessage, DeferredGradMessage, DeleteMessage, ObjectMessage, ObjectRef

if TYPE_CHECKING:
    from lightning_fed.workers.base import BaseWorker

PENDING, DELIVERED, DROPPED = "pending", "delivered", "dropped"
_GRAD_SET = "torch.Tensor.grad.__set__"


class SnapshotPool:
    """Buffers of gradient copies that no worker ever saw, by ``(shape, stride, dtype, device)``, at most
    ``max_bytes`` in all, so a send copies a gradient into memory already in use instead of fresh pages.

    Example:
        >>> pool = SnapshotPool(max_bytes=64)
        >>> g = torch.ones(4)
        >>> first = pool.copy_of(g); pool.give(first)
        >>> again = pool.copy_of(g * 2)
        >>> again is first, again
        (True, tensor([2., 2., 2., 2.]))
    """

    __slots__ = ("_bytes", "_free", "max_bytes")

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._bytes = 0
        self.max_bytes = max_bytes

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple:
        return tensor.shape, tensor.stride(), tensor.dtype, tensor.device

    def copy_of(self, grad: torch.Tensor) -> torch.Tensor:
        """A copy of ``grad`` (detached) that nothing else references, in a kept buffer when one fits."""
        free = self._free.get(self._key(grad))
        if not free:
            return grad.detach().clone()
        buffer = free.pop()
        self._bytes -= buffer.untyped_storage().nbytes()
        with torch.no_grad():
            buffer.copy_(grad)
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        """Keep ``buffer`` (a copy that was never delivered) for a later :meth:`copy_of`, room permitting."""
        size = buffer.untyped_storage().nbytes()
        if self._bytes + size <= self.max_bytes:
            self._free.setdefault(self._key(buffer), []).append(buffer)
            self._bytes += size

    def clear(self) -> None:
        self._free.clear()
        self._bytes = 0


SNAPSHOTS = SnapshotPool()
"""The process's pool of undelivered gradient copies (at most 256 MiB; ``SNAPSHOTS.clear()`` frees them)."""


class GradDelivery:
    """One gradient kept aside: the worker's answer to a :class:`DeferredGradMessage`, held by the sender's pointer.

    The sender reads :attr:`state`; when its pointer answers ``param.grad`` with a pointer of its own, it calls
    :meth:`name` with that pointer's id (the gradient is stored under it when it is delivered); and when it sets
    ``param.grad = None`` while no such pointer is left, it calls :meth:`drop`: nothing at the worker saw the gradient.
    """

    __slots__ = ("_outbox", "grad", "grad_id", "param_id", "pooled", "state")

    def __init__(self, outbox: GradOutbox, param_id: int, grad: torch.Tensor, pooled: bool = True) -> None:
        self._outbox = outbox
        self.param_id = param_id
        self.grad: torch.Tensor | None = grad
        self.pooled = pooled
        self.grad_id: int | None = None
        self.state = PENDING

    def name(self, grad_id: int) -> None:
        """Store the gradient under ``grad_id`` when it is delivered (a pointer with that id now stands for it)."""
        if self.state is not PENDING:
            raise RuntimeError(f"the gradient of object {self.param_id} was already {self.state}")
        self._outbox.by_grad.pop(self.grad_id, None)
        self.grad_id = grad_id
        self._outbox.by_grad[grad_id] = self

    def drop(self) -> None:
        """Withdraw the gradient (``param.grad = None`` before anything saw it); its copy's memory is reused."""
        if self.state is not PENDING or self.grad_id is not None:
            raise RuntimeError(f"the gradient of object {self.param_id} is {self.state} or named: it cannot be dropped")
        del self._outbox.by_param[self.param_id]
        self._outbox._drop(self)


class GradOutbox:
    """The gradients a worker keeps aside, by parameter id (arrival order) and by the id their pointer uses."""

    __slots__ = ("by_grad", "by_param")

    def __init__(self) -> None:
        self.by_param: dict[int, GradDelivery] = {}
        self.by_grad: dict[int, GradDelivery] = {}

    def __bool__(self) -> bool:
        return bool(self.by_param)

    def add(self, param_id: int, grad: torch.Tensor, pooled: bool = True) -> GradDelivery:
        old = self.by_param.pop(param_id, None)
        if old is not None:  # the same id stored twice: the first gradient's parameter is gone
            self._drop(old)
        delivery = self.by_param[param_id] = GradDelivery(self, param_id, grad, pooled)
        return delivery

    def deliver(self, worker: BaseWorker) -> None:
        """Attach every kept gradient to its parameter (and store it under its pointer's id), in arrival order."""
        if not self.by_param:
            return
        pending = list(self.by_param.values())
        self.by_param.clear()
        self.by_grad.clear()
        bump_grad_epoch()
        objects = worker._store.objects
        for delivery in pending:
            param = objects.get(delivery.param_id)
            if isinstance(param, torch.Tensor):
                try:
                    param.grad = delivery.grad
                except RuntimeError:  # the id now names another tensor (stored again): this gradient was not its
                    param = None
            self._store_grad(worker, delivery, param)

    def before(self, worker: BaseWorker, message: Any) -> None:
        """Called by the worker before it answers ``message``, while gradients are kept aside."""
        kind = type(message)
        if kind is ObjectMessage or kind is DeferredGradMessage:
            return
        if kind is DeleteMessage:
            self._forget(worker, message.obj_id)
            return
        if kind is CommandMessage and not self._may_see_grads(message, worker._store.objects):
            return
        self.deliver(worker)

    def drop_all(self) -> None:
        """Forget every kept gradient (the worker's objects were cleared)."""
        for delivery in self.by_param.values():
            self._drop(delivery)
        self.by_param.clear()
        self.by_grad.clear()

    # -- internals ----------------------------------------------------------------------------------------------
    def _may_see_grads(self, message: CommandMessage, objects: dict[int, Any]) -> bool:
        """Whether the command names a kept gradient's parameter or pointer, a tensor that requires grad, or
        anything not a plain tensor; ``param.grad = None`` on a gradient nobody saw drops it instead."""
        ids = _ref_ids((message.args, message.kwargs), [])
        if message.command == _GRAD_SET and len(ids) == 1 and len(message.args) == 2 and message.args[1] is None:
            delivery = self.by_param.get(ids[0])
            if delivery is not None and delivery.grad_id is None:
                delivery.drop()
                return False
        for obj_id in ids:
            if obj_id in self.by_param or obj_id in self.by_grad:
                return True
            obj = objects.get(obj_id)
            if obj is not None and (type(obj) is not torch.Tensor or obj.requires_grad):
                return True
        return False

    def _forget(self, worker: BaseWorker, obj_id: int) -> None:
        """A delete: of a kept gradient's pointer (nobody will ask for it), or of its parameter."""
        delivery = self.by_grad.pop(obj_id, None)
        if delivery is not None:
            delivery.grad_id = None
        delivery = self.by_param.pop(obj_id, None)
        if delivery is None:
            return
        if delivery.grad_id is None:
            self._drop(delivery)
            return
        self.by_grad.pop(delivery.grad_id, None)  # its pointer lives on: the gradient stays, on its own
        self._store_grad(worker, delivery, worker._store.objects.get(obj_id))

    def _store_grad(self, worker: BaseWorker, delivery: GradDelivery, param: Any) -> None:
        grad, delivery.grad = delivery.grad, None
        delivery.state = DELIVERED
        guard = worker._guard
        if guard is not None and param is not None:  # labelled as its parameter, as on arrival (WorkerGuard.on_store)
            bits = guard.labels.of(delivery.param_id, param)
            if bits:
                guard.labels.add_tensor(grad, bits)
        if delivery.grad_id is not None:
            worker._store.set(delivery.grad_id, grad)

    @staticmethod
    def _drop(delivery: GradDelivery) -> None:
        grad, delivery.grad = delivery.grad, None
        delivery.state = DROPPED
        if grad is not None and delivery.pooled:  # a gradient handed over by its sender is simply freed
            SNAPSHOTS.give(grad)


def _ref_ids(value: Any, out: list[int]) -> list[int]:
    kind = type(value)
    if kind is ObjectRef:
        out.append(value.obj_id)
    elif kind is tuple or kind is list or kind is dict:
        for item in value.values() if kind is dict else value:
            _ref_ids(item, out)
    return out


def handle_deferred_grad(worker: BaseWorker, message: DeferredGradMessage) -> GradDelivery:
    """The worker's handler: keep ``message.grad`` aside for object ``message.param_id``."""
    return worker._grad_outbox.add(message.param_id, message.grad, message.pooled)
