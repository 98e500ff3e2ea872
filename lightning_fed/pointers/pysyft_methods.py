"""PySyft 0.2's pointer methods beyond ``get``/``send``/``move``: ``garbage_collect_data``, ``get_()``,
``remote_get()``, and clear errors for ``mid_get()`` and ``.child``. Mixed into :class:`PointerTensor`.

Every method here that moves data does so through ``get()`` or ``move()``, so the worker's data-access policy
decides exactly as it does for those.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob, alice = sy.VirtualWorker(id="bob-m"), sy.VirtualWorker(id="alice-m")
    >>> chain = sy.send(torch.tensor([1, 2]), bob).send(alice)
    >>> chain.remote_get() is chain, len(bob.objects), len(alice.objects)
    (True, 0, 1)
    >>> ptr = sy.send(torch.tensor([3]), bob)
    >>> ptr.get_(), type(ptr).__name__
    (tensor([3]), 'Tensor')
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from lightning_fed.exceptions import FederatedConfigError, PointerError
from lightning_fed.workers.messages import ObjectMessage

if TYPE_CHECKING:
    from lightning_fed.pointers.pointer_tensor import PointerTensor

_LIVE = "live"
_FETCHED = "fetched"
_DELETED = "deleted"
_SENT = "sent"


class PointerAttributeError(PointerError, AttributeError):
    """A PySyft attribute a pointer here does not have (also an ``AttributeError``, so ``hasattr`` is False)."""


def check_gc_flag(value: Any) -> bool:
    """``value`` if it is a bool, else raise naming ``garbage_collect_data``."""
    if not isinstance(value, bool):
        raise FederatedConfigError(
            f"`garbage_collect_data={value!r}` is not valid: pass True (dropping the pointer frees the object at the "
            "worker, the default) or False (the object stays at the worker)."
        )
    return value


class PySyftPointerMethods:
    """PySyft 0.2's extra pointer API (see the module docstring)."""

    _points_to_pointer: bool = False  # a chain: the object at `location` is itself a pointer

    @property
    def garbage_collect_data(self) -> bool:
        """Whether dropping this pointer frees the object at the worker (PySyft's name; default True)."""
        return self._frees

    @garbage_collect_data.setter
    def garbage_collect_data(self, value: bool) -> None:
        self._frees = check_gc_flag(value)

    def get_(self: PointerTensor) -> torch.Tensor:
        """PySyft's in-place get: this very object becomes the tensor it pointed to (``get(inplace=True)``)."""
        self._check_live()
        if weakref.getweakrefs(self):
            raise PointerError(
                "get_() turns the pointer object into the tensor in place, which torch refuses while something holds "
                "a weak reference to it: use `x = ptr.get()` instead."
            )
        value = self.get()  # the worker's policy decides, as for .get()
        fresh = value
        if type(value) is not type(self):  # a new object over the same memory: the worker's graph may hold `value`
            fresh = value.detach()
            if isinstance(value, torch.nn.Parameter):
                fresh = type(value)(fresh, requires_grad=value.requires_grad)
            elif value.requires_grad:
                fresh.requires_grad_(True)
            if value.is_leaf and value.grad is not None:
                fresh.grad = value.grad
            fresh.__dict__.update(value.__dict__)
        torch.utils.swap_tensors(self, fresh)
        return self

    def remote_get(self: PointerTensor) -> PointerTensor:
        """On a chain (``ptr.send(alice)`` of a pointer to bob's tensor): bring the tensor from bob to alice, the
        worker this pointer points to; returns this pointer, which now points to the tensor at alice.

        It is alice's ``get()`` of her pointer (which carries no values) followed by a ``move()`` of the tensor from
        bob to alice: bob's policy decides as for ``.move()``, and a refusal leaves everything as it was.
        """
        self._check_live()
        if not self._points_to_pointer:
            raise PointerError(
                f"remote_get() needs a pointer chain (a pointer sent on with `ptr.send(worker)`); this pointer points "
                f"to the tensor itself at worker {self.location.id!r}: use .get() to bring it here, or "
                f".move(worker) to move it."
            )
        middle, old_id, owner = self.location, self.id_at_location, self.owner
        inner = self.get()
        try:
            inner.move(middle)
        except BaseException:
            owner._send(ObjectMessage(old_id, inner), middle)  # the middle worker holds its pointer again
            self._state = _LIVE
            raise
        self.id_at_location = inner.id_at_location
        self._points_to_pointer = inner._points_to_pointer
        inner._state = _DELETED  # this pointer owns the tensor now: dropping `inner` frees nothing
        self._state = _LIVE
        return self

    def mid_get(self) -> NoReturn:
        raise PointerError(
            "mid_get() is the step PySyft's worker ran for remote_get(); call ptr.remote_get() on a pointer chain "
            "(the middle worker then holds the tensor), or ptr.get() to bring the tensor here."
        )

    @property
    def child(self) -> NoReturn:
        raise PointerAttributeError(
            "a pointer has no .child here: it is not wrapped in a tensor as in PySyft, the pointer is the tensor "
            "object itself. Use it directly; ptr.location and ptr.id_at_location say where the data is."
        )
