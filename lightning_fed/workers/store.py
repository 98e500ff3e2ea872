"""A worker's object store: ``id -> object``, with the operations a worker needs and nothing else.

Example:
    >>> import torch
    >>> store = ObjectStore()
    >>> store.set(7, torch.tensor([1, 2]))
    >>> 7 in store, len(store)
    (True, 1)
    >>> store.pop(7)
    tensor([1, 2])
    >>> store.objects
    {}
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lightning_fed.exceptions import WorkerError

_ID_RNG = random.Random()  # its own generator: object ids never consume the user's random state
_random = _ID_RNG.random


def new_object_id() -> int:
    """A fresh random 11-digit object id, in the form PySyft shows (``88496800993``): uniform to within one part in
    2**53 (one float draw, a third of ``randrange``'s cost on this hot path)."""
    return 10_000_000_000 + int(_random() * 90_000_000_000)


def seed_object_ids(seed: int) -> None:
    """Make the following object ids repeat from run to run (``TorchHook(torch, seed=...)``, as in PySyft).

    Example:
        >>> seed_object_ids(7); first = new_object_id()
        >>> seed_object_ids(7); first == new_object_id()
        True
    """
    _ID_RNG.seed(seed)


_GONE = {
    "get": "it left through .get() earlier (a .get() takes the object out of the worker; use .copy().get() to keep "
    "it there)",
    "delete": "it was deleted (its pointer was dropped or ptr.delete() ran)",
    "clear": "it was deleted with the worker's other objects (clear_objects())",
}


def stored_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (a tensor, a module's parameters and buffers, or lists, tuples and dicts of
    them), as a store's quota counts them: each tensor's own elements, views and shared memory counted again.

    Example:
        >>> stored_bytes(torch.zeros(4)), stored_bytes([torch.zeros(2, dtype=torch.float64), "label"])
        (16, 16)
    """
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(stored_bytes(t) for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, (list, tuple)):
        return sum(stored_bytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(stored_bytes(v) for v in obj.values())
    return 0


class ObjectStore:
    """The objects a worker holds, by id. The dict is exposed as :attr:`objects` (PySyft's ``_objects``).

    The store also remembers how the last ``max_departed`` objects left (:meth:`depart`), so that a request for one
    of them says what happened to it (:meth:`why_missing`). With a ``quota`` (bytes, :func:`stored_bytes`), an object
    that would take the objects stored since the quota was set past it is refused with a
    :class:`~lightning_fed.exceptions.WorkerError` and not stored (``fix`` ends that error: how to raise the quota).

    Example:
        >>> store = ObjectStore()
        >>> store.set(1, "shard"); store.depart(1, "get")
        >>> store.why_missing(1), store.why_missing(2)
        ('it left through .get() earlier (a .get() takes the object out of the worker; use .copy().get() to keep it \
there)', 'it never existed here')
        >>> store.limit(8, "raise it")
        >>> store.set(2, torch.zeros(2)); store.used
        8
        >>> store.set(3, torch.zeros(1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.WorkerError: this worker holds 8 B of others' objects, its quota is 8 B, and a...
    """

    __slots__ = ("departed", "fix", "max_departed", "objects", "owner", "quota", "sizes", "used")

    def __init__(self, max_departed: int = 10_000) -> None:
        self.objects: dict[int, Any] = {}
        self.departed: OrderedDict[int, str] = OrderedDict()
        self.max_departed = max_departed
        self.quota: int | None = None
        self.fix, self.owner = "", "this worker"
        self.sizes: dict[int, int] = {}  # bytes of each object stored since the quota was set
        self.used = 0

    def limit(self, quota: int, fix: str, owner: str = "this worker") -> None:
        """Hold at most ``quota`` bytes of objects stored from now on; ``fix`` says how to raise it, ``owner`` names
        the worker in the error."""
        self.quota, self.fix, self.owner = int(quota), fix, owner

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Objects stored inside do not count against the quota (a site's own datasets)."""
        quota, self.quota = self.quota, None
        try:
            yield
        finally:
            self.quota = quota

    def set(self, obj_id: int, obj: Any) -> None:
        if self.quota is not None:
            size, before = stored_bytes(obj), self.sizes.get(obj_id, 0)
            if self.used - before + size > self.quota:
                raise WorkerError(
                    f"{self.owner} holds {_amount(self.used)} of others' objects, its quota is {_amount(self.quota)}, "
                    f"and a {type(obj).__name__} of {_amount(size)} would pass it: it was not stored. Free objects "
                    f"there (drop their pointers, or .get() them), or {self.fix}."
                )
            self.sizes[obj_id], self.used = size, self.used - before + size
        self.objects[obj_id] = obj

    def get(self, obj_id: int) -> Any:
        return self.objects[obj_id]

    def pop(self, obj_id: int) -> Any:
        if self.sizes:  # counted objects only exist under a quota: the check keeps every other store's path as it was
            self._release(obj_id)
        return self.objects.pop(obj_id)

    def discard(self, obj_id: int) -> None:
        if self.sizes:
            self._release(obj_id)
        self.objects.pop(obj_id, None)

    def _release(self, obj_id: int) -> None:
        self.used -= self.sizes.pop(obj_id, 0)

    def new_id(self) -> int:
        """An id not used in this store yet."""
        obj_id = new_object_id()
        while obj_id in self.objects:
            obj_id = new_object_id()
        return obj_id

    def depart(self, obj_id: int, how: str) -> None:
        """Forget ``obj_id`` and remember how it left: ``"get"``, ``"delete"``, ``"clear"`` or a sentence."""
        if self.sizes:
            self._release(obj_id)
        if self.objects.pop(obj_id, None) is None and how == "delete":
            return  # a pointer dropped after its object left: keep the first reason
        departed = self.departed
        departed[obj_id] = how
        departed.move_to_end(obj_id)
        while len(departed) > self.max_departed:
            departed.popitem(last=False)

    def why_missing(self, obj_id: int) -> str:
        """Why this store holds no ``obj_id``: how it left, or that it never existed here (or left long ago)."""
        how = self.departed.get(obj_id)
        if how is None:
            full = len(self.departed) >= self.max_departed
            return "it never existed here" + (
                f" (or it left before the last {self.max_departed} that did)" if full else ""
            )
        return _GONE.get(how, how)

    def clear(self) -> None:
        for obj_id in list(self.objects):
            self.depart(obj_id, "clear")

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        return f"ObjectStore({len(self.objects)} objects)"


def _amount(size: int) -> str:
    """Bytes for a message: ``512 B``, ``585.9 KiB``, ``3.0 MiB``."""
    if size < 1 << 10:
        return f"{size} B"
    return f"{size / (1 << 10):.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"
