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
from typing import Any

_ID_RNG = random.Random()  # its own generator: object ids never consume the user's random state


def new_object_id() -> int:
    """A fresh random 11-digit object id, in the form PySyft shows (``88496800993``)."""
    return _ID_RNG.randrange(10_000_000_000, 100_000_000_000)


def seed_object_ids(seed: int) -> None:
    """Make the following object ids repeat from run to run (``TorchHook(torch, seed=...)``, as in PySyft).

    Example:
        >>> seed_object_ids(7); first = new_object_id()
        >>> seed_object_ids(7); first == new_object_id()
        True
    """
    _ID_RNG.seed(seed)


class ObjectStore:
    """The objects a worker holds, by id. The dict is exposed as :attr:`objects` (PySyft's ``_objects``)."""

    __slots__ = ("objects",)

    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}

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

    def clear(self) -> None:
        self.objects.clear()

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        return f"ObjectStore({len(self.objects)} objects)"
