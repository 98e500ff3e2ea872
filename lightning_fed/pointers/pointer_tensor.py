"""``PointerTensor``: "this tensor lives at worker W under id N", usable as a tensor.

Every torch function, operator, tensor method and property getter/setter applied to a pointer reaches
:meth:`PointerTensor.__torch_function__`, which sends the command to the owning worker and wraps each tensor the
worker returns in a new pointer (or returns the input pointer itself for in-place operations). Non-tensor results
(shapes, dtypes, ``None``) come back as plain values. Dropping the last reference to a pointer frees the object at
the worker. A pointer answers two kinds of reads itself: its layout (``layout``, ``is_sparse``), which never changes
at the worker, and its last ``.grad`` answer while nothing could have changed it (:mod:`lightning_fed.pointers.grads`).

Example:
    >>> import torch, lightning_fed as sy
    >>> bob = sy.VirtualWorker(id="bob")
    >>> a = sy.send(torch.tensor([3.14, 6.28]), bob)
    >>> b = sy.send(torch.tensor([6.14, 3.28]), bob)
    >>> c = a + b
    >>> c.location is bob, c.shape
    (True, torch.Size([2]))
    >>> c.get()
    tensor([9.2800, 9.5600])
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from typing import Any

import torch

from lightning_fed.exceptions import NotAWorkerError, PointerError
from lightning_fed.pointers.pysyft_methods import _DELETED, _FETCHED, _LIVE, _SENT, PySyftPointerMethods
from lightning_fed.workers.base import BaseWorker, me, register_search
from lightning_fed.workers.commands import command_name, refusal_reason
from lightning_fed.workers.messages import (
    CommandMessage,
    DeleteMessage,
    GetMessage,
    MoveMessage,
    ObjectMessage,
    ObjectRef,
    SearchMessage,
    TensorDescriptor,
)
from lightning_fed.workers.store import new_object_id


def check_worker(worker: Any, what: str = "send()") -> BaseWorker:
    """Return ``worker`` if it is a worker, else raise :class:`~lightning_fed.exceptions.NotAWorkerError`."""
    if not isinstance(worker, BaseWorker):
        hint = f"VirtualWorker(hook, id={worker!r})" if isinstance(worker, str) else "VirtualWorker(hook, id='alice')"
        raise NotAWorkerError(
            f"{what} needs a worker, got {worker!r} ({type(worker).__name__}): create one with "
            f"lightning_fed.{hint} and pass that object."
        )
    return worker


class PointerTensor(PySyftPointerMethods, torch.Tensor):
    """A pointer to a tensor held by a worker. Create pointers with ``send``, never directly.

    A pointer can itself be sent: ``ptr.send(alice)`` on a pointer to bob's tensor gives alice that pointer and
    returns a pointer to it (a chain: bob keeps the data, ``.get()`` unwinds one level, operations on the chain run
    at bob); ``ptr.move(alice)`` moves the data itself.

    Attributes:
        location: the worker that holds the tensor.
        id_at_location: the tensor's id in that worker's store.
        owner: the worker that holds this pointer (``me``, or a worker in a chain); it sends the pointer's messages.
        id: this pointer's own id.
        tags, description: what :meth:`BaseWorker.search <lightning_fed.workers.BaseWorker.search>` found, if the
            pointer came from a search.
    """

    location: BaseWorker
    id_at_location: int
    owner: BaseWorker
    id: int
    _state: str
    _frees: bool
    tags: set[str] | None = None
    description: str | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> PointerTensor:
        raise PointerError("PointerTensor is not built directly: use `tensor.send(worker)` or lightning_fed.send().")

    @classmethod
    def _make(cls, location: BaseWorker, id_at_location: int, shape: torch.Size, dtype: torch.dtype,
              device: torch.device, owner: BaseWorker = me,
              layout: torch.layout = torch.strided) -> PointerTensor:  # fmt: skip
        ptr = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)
        ptr._layout = layout  # never changes at the worker: is_sparse and layout are answered here
        ptr.location = location
        ptr.id_at_location = id_at_location
        ptr.owner = owner
        ptr.id = new_object_id()
        ptr._state = _LIVE
        ptr._frees = True
        return ptr

    # -- the pointer's own API ------------------------------------------------------------------------------------
    def _check_live(self) -> None:
        state = self._state
        if state is _SENT:
            raise PointerError(
                f"the pointer to {self.location.id}:{self.id_at_location} was sent to worker {self._sent_to!r} with "
                ".send(), which now holds it: use the pointer .send() returned (its .get() brings this pointer back), "
                "or .move() the data instead of sending the pointer."
            )
        if state is not _LIVE:
            how = "fetched with .get()" if state is _FETCHED else "deleted"
            raise PointerError(
                f"the pointer to {self.location.id}:{self.id_at_location} was already {how}; its object is no longer "
                "at the worker. Keep the value .get() returned, or send the tensor again."
            )

    def get(self, inplace: bool = False) -> torch.Tensor:
        """Bring the object back from its worker, which forgets it. A pointer can be fetched once.

        At the end of a chain this is the tensor; in a chain (a pointer to a pointer) it is the next pointer.
        ``inplace=True`` is :meth:`get_`: this object becomes the tensor.
        """
        if inplace is not False:
            if inplace is True:
                return self.get_()
            raise PointerError(f"`inplace={inplace!r}` is not valid: pass True (as get_()) or False.")
        self._check_live()
        obj = self.owner._send(GetMessage(self.id_at_location), self.location)
        self._state = _FETCHED
        self.__dict__.pop("_kept_grad", None)  # the pointer its .grad read returned (pointers/grads.py)
        return received(obj, self.owner)

    def to_here(self) -> torch.Tensor:
        """A local copy of the tensor; the worker keeps its own (like ``torch.distributed.rpc.RRef.to_here``)."""
        self._check_live()
        return received(self.owner._send(GetMessage(self.id_at_location, keep=True), self.location), self.owner)

    def move(self, worker: BaseWorker) -> PointerTensor | torch.Tensor:
        """Move the tensor to ``worker`` directly, without passing through ``me``; this pointer follows it.

        Moving to the local worker ``me`` is ``get()``.
        """
        check_worker(worker, "move()")
        self._check_live()
        if worker is self.location:
            return self
        if worker is self.owner:
            return self.get()
        new_id = new_object_id()
        self.owner._send(MoveMessage(self.id_at_location, worker, new_id), self.location)
        self.__dict__.pop("_kept_grad", None)
        self.location = worker
        self.id_at_location = new_id
        return self

    def send(self, worker: BaseWorker) -> PointerTensor:
        """Give this pointer to ``worker`` and return a pointer to it there (PySyft's pointer to a pointer).

        The data stays where it is: ``worker`` now holds the pointer (and frees the data when it drops it), this
        pointer can no longer be used, and operations on the returned pointer run through ``worker`` at the
        data's worker. Sending to the data's own worker, or to this pointer's owner, returns this pointer.
        To move the data itself, use :meth:`move`.
        """
        check_worker(worker)
        self._check_live()
        if worker is self.location or worker is self.owner:
            return self
        shape, dtype, device = self.shape, self.dtype, self.device  # asked at the worker: exact after in-place ops
        held = PointerTensor._make(self.location, self.id_at_location, shape, dtype, device, worker, self._layout)
        held.__dict__.update(_metadata(self))
        held._points_to_pointer = self._points_to_pointer
        new_id = new_object_id()
        self.owner._send(ObjectMessage(new_id, held), worker)
        self._state = _SENT  # `held` is the one pointer to the data now: dropping this one frees nothing
        self.__dict__.pop("_kept_grad", None)
        self._sent_to = worker.id
        chained = PointerTensor._make(worker, new_id, shape, dtype, device, self.owner, self._layout)
        chained.__dict__.update(_metadata(self))
        chained._points_to_pointer = True
        return chained

    def _on_arrival(self, worker: BaseWorker) -> None:
        """Called by the worker that stores this pointer: its messages now go out from there."""
        self.owner = worker

    def copy(self) -> PointerTensor:
        """A pointer to a new, independent copy of the tensor at the same worker (``requires_grad`` kept)."""
        self._check_live()
        copy = torch.Tensor.clone(torch.Tensor.detach(self))
        if torch.Tensor.requires_grad.__get__(self):
            torch.Tensor.requires_grad_(copy)
        return copy

    def delete(self) -> None:
        """Free the tensor at the worker now; the pointer cannot be used afterwards."""
        self._check_live()
        self.owner._send(DeleteMessage(self.id_at_location), self.location)
        self._state = _DELETED
        self.__dict__.pop("_kept_grad", None)

    def tag(self, *tags: str) -> PointerTensor:
        raise PointerError(
            "tags are given to a tensor before it is sent (`x.tag('#radio').send(bob)`), and a worker's "
            "`search()` returns pointers that carry them; tagging a pointer would not reach the worker's tensor."
        )

    def describe(self, description: str) -> PointerTensor:
        raise PointerError(
            "a description is given to a tensor before it is sent (`x.describe('...').send(bob)`); describing a "
            "pointer would not reach the worker's tensor."
        )

    @property
    def is_live(self) -> bool:
        """Whether the object is still at the worker (not fetched, not deleted)."""
        return self._state is _LIVE

    def __del__(self) -> None:
        state = self.__dict__.get("_state")
        if state is _LIVE and self._frees:
            self._state = _DELETED
            with contextlib.suppress(Exception):  # interpreter shutdown or a worker gone: nothing left to free
                self.owner._send(DeleteMessage(self.id_at_location), self.location)

    def _describe(self) -> str:
        return f"(Wrapper)>[PointerTensor | {self.owner.id}:{self.id} -> {self.location.id}:{self.id_at_location}]"

    # -- torch dispatch -------------------------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        local = _LOCAL_FUNCTIONS.get(func)
        if local is not None:
            return local(*args, **(kwargs or {}))
        return remote_call(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise PointerError(
            f"{func} cannot run on a pointer: torch called it without offering it to pointers first (as it does for "
            "Tensor.set_ and the sparse constructors), so no worker can run it. Compute it at the worker from commands "
            "that take pointers, or .get() the tensors first where the worker's policy releases them."
        )


def remote_call(func: Any, args: tuple, kwargs: dict | None) -> Any:
    """Run the torch function ``func`` at the worker its pointer arguments point to; results come back as pointers."""
    name = command_name(func)
    if name is None:
        raise PointerError(
            f"{getattr(func, '__qualname__', func)!s} cannot run on a pointer: it is not a torch function a "
            "worker runs. Call .get() first if the value may leave the worker."
        )
    call = _Call(name)
    margs = call.convert(args)
    mkwargs = call.convert(kwargs) if kwargs else {}
    call.check()
    reason = refusal_reason(name)
    if reason is not None:
        raise PointerError(f"{name} on a pointer to worker {call.location.id!r} is refused: {reason}.")
    response = call.owner._send(CommandMessage(name, margs, mkwargs), call.location)
    return call.build(response)


class _Call:
    """Turns a call's arguments into a message (pointers -> ids) and the worker's answer back into pointers."""

    __slots__ = ("chain", "local_tensor", "location", "name", "owner", "pointers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.location: BaseWorker | None = None
        self.owner: BaseWorker = me
        self.pointers: dict[int, PointerTensor] = {}
        self.local_tensor: torch.Tensor | None = None
        self.chain = False  # the arguments are pointers to pointers: so are the results

    def convert(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is PointerTensor:
            obj._check_live()
            location = obj.location
            if self.location is None:
                self.location = location
                self.owner = obj.owner
            elif location is not self.location:
                raise PointerError(
                    f"{self.name} mixes a pointer to worker {self.location.id!r} with a pointer to worker "
                    f"{location.id!r}: tensors must be at the same worker. Move one first, e.g. "
                    f"`ptr.move({self.location.id})`."
                )
            self.pointers[obj.id_at_location] = obj
            if obj._points_to_pointer:
                self.chain = True
            return ObjectRef(obj.id_at_location)
        if kind is tuple or kind is list:
            return kind(self.convert(item) for item in obj)
        if kind is dict:
            return {key: self.convert(value) for key, value in obj.items()}
        if isinstance(obj, torch.Tensor):
            self.local_tensor = obj
        return obj

    def check(self) -> None:
        if self.location is None:  # only reachable through a subclass misuse
            raise PointerError(f"{self.name} was called with no live pointer.")
        if self.local_tensor is not None:
            t = self.local_tensor
            raise PointerError(
                f"{self.name} mixes a pointer to worker {self.location.id!r} with a local tensor of shape "
                f"{tuple(t.shape)}: send the local tensor to the worker first, e.g. `t.send(worker)`."
            )

    def build(self, response: Any) -> Any:
        kind = type(response)
        if kind is TensorDescriptor:
            ptr = PointerTensor._make(self.location, response.obj_id, response.shape, response.dtype,
                                      response.device, self.owner, response.layout)  # fmt: skip
            if self.chain:  # the class default (False) otherwise: no write per result
                ptr._points_to_pointer = True
            return ptr
        if kind is ObjectRef:
            return self.pointers[response.obj_id]
        if kind is tuple or kind is list:
            return kind(self.build(item) for item in response)
        if isinstance(response, tuple):  # namedtuples, and structseqs such as torch.return_types.max
            items = [self.build(item) for item in response]
            return kind(*items) if hasattr(response, "_fields") else kind(items)
        if kind is dict:
            return {key: self.build(value) for key, value in response.items()}
        return response


def _repr(self: PointerTensor, *args: Any, **kwargs: Any) -> str:
    return self._describe()


def _format(self: PointerTensor, spec: str = "") -> str:
    return format(self._describe(), spec)


def _iter(self: PointerTensor) -> Any:
    return iter(torch.unbind(self, 0))


def _deepcopy(self: PointerTensor, memo: dict) -> PointerTensor:
    copy = self.copy()
    memo[id(self)] = copy
    return copy


def _reduce_ex(self: PointerTensor, protocol: int) -> Any:
    raise PointerError(
        f"a pointer to worker {self.location.id!r} cannot be pickled: it refers to an object in this process. "
        "Call .get() first to save the value."
    )


def _layout_of(self: PointerTensor) -> torch.layout:
    self._check_live()  # as the worker would: a fetched or deleted pointer answers nothing
    return self._layout


_LOCAL_FUNCTIONS: dict[Any, Any] = {
    torch.Tensor.layout.__get__: _layout_of,  # metadata that never changes at the worker: no round trip
    torch.Tensor.is_sparse.__get__: lambda self: _layout_of(self) is torch.sparse_coo,
    torch.Tensor.is_sparse_csr.__get__: lambda self: _layout_of(self) is torch.sparse_csr,
    torch.Tensor.__repr__: _repr,
    torch.Tensor.__str__: _repr,
    torch.Tensor.__format__: _format,
    torch.Tensor.__iter__: _iter,
    torch.Tensor.__deepcopy__: _deepcopy,
    torch.Tensor.__reduce_ex__: _reduce_ex,
}


def worker_id_of(obj: Any) -> Hashable | None:
    """The id of the worker a pointer (or the first pointer in a tuple/list/dict batch) points to, else ``None``."""
    if isinstance(obj, PointerTensor):
        return obj.location.id
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = worker_id_of(item)
            if found is not None:
                return found
    if isinstance(obj, dict):
        for item in obj.values():
            found = worker_id_of(item)
            if found is not None:
                return found
    return None


def pointers_from(response: Any, location: BaseWorker, owner: BaseWorker = me) -> Any:
    """Turn a worker's answer (descriptors, nested in tuples/lists/dicts) into pointers located at ``location``."""
    call = _Call("response")
    call.location = location
    call.owner = owner
    return call.build(response)


def refs_of(obj: Any) -> tuple[Any, BaseWorker]:
    """Replace every pointer in ``obj`` (tuples/lists/dicts) by an :class:`ObjectRef`; return it and the location.

    Raises :class:`PointerError` if the pointers live at different workers or ``obj`` holds no pointer.
    """
    call = _Call("batch")
    converted = call.convert(obj)
    call.check()
    return converted, call.location


def _metadata(tensor: torch.Tensor) -> dict[str, Any]:
    """The ``tags`` and ``description`` a tensor carries (PySyft's data-discovery metadata), if any."""
    found = tensor.__dict__
    return {key: found[key] for key in ("tags", "description") if key in found}


def received(obj: Any, worker: BaseWorker) -> Any:
    """``obj`` as it reaches ``worker``: a pointer in it (one step of a chain) now sends its messages from there."""
    if type(obj) is PointerTensor:
        obj._on_arrival(worker)
    return obj


def search_pointers(worker: BaseWorker, query: tuple[str, ...], owner: BaseWorker = me) -> list[PointerTensor]:
    """Ask ``worker`` for the tensors matching ``query`` (see ``BaseWorker.search``); pointers that free nothing."""
    found = []
    for result in owner._send(SearchMessage(query), worker):
        desc = result.descriptor
        ptr = PointerTensor._make(worker, desc.obj_id, desc.shape, desc.dtype, desc.device, owner, desc.layout)
        ptr._frees = False  # the worker keeps the tensor for whoever sent it; this pointer only found it
        ptr.tags, ptr.description = set(result.tags), result.description
        found.append(ptr)
    return found


register_search(search_pointers)  # BaseWorker.search answers with these pointers
