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
from typing import Any

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


class ObjectStore:
    """The objects a worker holds, by id. The dict is exposed as :attr:`objects` (PySyft's ``_objects``).

    The store also remembers how the last ``max_departed`` objects left (:meth:`depart`), so that a request for one
    of them says what happened to it (:meth:`why_missing`).

    Example:
        >>> store = ObjectStore()
        >>> store.set(1, "shard"); store.depart(1, "get")
        >>> store.why_missing(1), store.why_missing(2)
        ('it left through .get() earlier (a .get() takes the object out of the worker; use .copy().get() to keep it \
there)', 'it never existed here')
    """

    __slots__ = ("departed", "max_departed", "objects")

    def __init__(self, max_departed: int = 10_000) -> None:
        self.objects: dict[int, Any] = {}
        self.departed: OrderedDict[int, str] = OrderedDict()
        self.max_departed = max_departed

    def set(self, obj_id: int, obj: Any) -> None:
        self.objects[obj_id] = obj

    def get(self, obj_id: int) -> Any:
        return self.objects[obj_id]

    def pop(self, obj_id: int) -> Any:
        return self.objects.pop(obj_id)

    def discard(self, obj_id: int) -> None:
        self.objects.pop(obj_id, None)

    def new_id(self) -> int:
        """An id not used in this store yet."""
        obj_id = new_object_id()
        while obj_id in self.objects:
            obj_id = new_object_id()
        return obj_id

    def depart(self, obj_id: int, how: str) -> None:
        """Forget ``obj_id`` and remember how it left: ``"get"``, ``"delete"``, ``"clear"`` or a sentence."""
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
