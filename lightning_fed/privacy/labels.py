"""Privacy labels that follow memory: a tensor's labels live on its storage, so every view, slice, ``.detach()``,
``.data``, ``set_`` and in-place write shares them.

``t.untyped_storage()`` is the same Python object for every tensor over that memory, and it can be weakly
referenced: it dies with the memory. :class:`StorageLabels` keeps ``id(storage) -> labels`` and drops an entry when
its storage dies, so an id reused by new memory never inherits old labels. Tensors without a storage (sparse,
MKL-DNN) are labelled as objects, for as long as they live; other objects (dataset shards) by their id in the store.

Labels are bits: :data:`PRIVATE` (the worker's data, or computed from it) and :data:`MODEL` (model parameters,
their gradients and updates).

Example:
    >>> import torch
    >>> labels = StorageLabels()
    >>> x = torch.zeros(4)
    >>> labels.add(1, x[2:], PRIVATE)  # label a slice...
    >>> labels.of(2, x.view(2, 2)) == PRIVATE  # ...and every view of that memory carries it
    True
    >>> labels.of(3, torch.zeros(4))
    0
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lightning_fed.workers.messages import LABEL_MODEL as MODEL
from lightning_fed.workers.messages import LABEL_PRIVATE as PRIVATE

__all__ = ["MODEL", "PRIVATE", "StorageLabels", "label_names", "storage_of", "tensors_in"]


def storage_of(obj: Any) -> Any:
    """The storage object of a tensor with one (``None`` for anything else, e.g. a pointer kept at a worker)."""
    kind = type(obj)
    if kind is torch.Tensor or kind is nn.Parameter:
        try:
            return obj.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested, or otherwise storage-less tensors
            return None
    if isinstance(obj, torch.Tensor) and "id_at_location" not in obj.__dict__:  # a pointer has no memory here
        try:
            return obj.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return None
    return None


def label_names(bits: int) -> str:
    """``"private"``, ``"model"``, ``"private+model"`` or ``"public"``."""
    names = [name for bit, name in ((PRIVATE, "private"), (MODEL, "model")) if bits & bit]
    return "+".join(names) or "public"


def leaves(obj: Any) -> Iterator[Any]:
    """The leaves of ``obj``: what it holds nested in tuples, lists, dicts and structseqs (``torch.return_types.max``);
    a tensor is a leaf."""
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from leaves(item)
    elif type(obj) is dict:
        for item in obj.values():
            yield from leaves(item)
    else:
        yield obj


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``obj`` (see :func:`leaves`)."""
    return (leaf for leaf in leaves(obj) if isinstance(leaf, torch.Tensor))


class StorageLabels:
    """One worker's labels: by storage for tensors, by object id for everything else (see the module docstring)."""

    __slots__ = ("_by_id", "_labels", "_objects", "_refs")

    def __init__(self) -> None:
        self._labels: dict[int, int] = {}  # id(storage) -> bits (read directly by the guard's fast path)
        self._refs: dict[int, weakref.ref] = {}
        self._objects: dict[int, int] = {}  # id(tensor) -> bits, for tensors without a storage (weakly referenced)
        self._by_id: dict[int, int] = {}

    @property
    def by_storage(self) -> dict[int, int]:
        """``id(storage) -> labels``, for a caller that looks many tensors up at once."""
        return self._labels

    def of(self, obj_id: int | None, obj: Any) -> int:
        """The labels of ``obj`` (stored under ``obj_id``): those of its memory, or of its id if it has none."""
        storage = storage_of(obj)
        if storage is not None:
            return self._labels.get(id(storage), 0)
        found = self._objects.get(id(obj), 0) if self._objects else 0
        return found | self._by_id.get(obj_id, 0) if obj_id is not None else found

    def of_tensor(self, tensor: Any) -> int:
        storage = storage_of(tensor)
        if storage is None:
            return self._objects.get(id(tensor), 0) if self._objects else 0
        return self._labels.get(id(storage), 0)

    def add(self, obj_id: int | None, obj: Any, bits: int) -> None:
        """Add ``bits`` to the labels of ``obj``'s memory (or of ``obj`` and ``obj_id`` when it has no storage)."""
        if not bits:
            return
        storage = storage_of(obj)
        if storage is None:
            if isinstance(obj, torch.Tensor):
                self._add_object(obj, bits)
            if obj_id is not None:
                self._by_id[obj_id] = self._by_id.get(obj_id, 0) | bits
            return
        self.add_storage(storage, bits)

    def add_tensor(self, tensor: Any, bits: int) -> None:
        """Add ``bits`` to the labels of ``tensor``'s memory, or of the tensor itself when it has no storage."""
        if not bits:
            return
        storage = storage_of(tensor)
        if storage is not None:
            self.add_storage(storage, bits)
        elif isinstance(tensor, torch.Tensor):  # sparse, MKL-DNN: what is computed from it is labelled in turn
            self._add_object(tensor, bits)

    def _add_object(self, tensor: torch.Tensor, bits: int) -> None:
        key = id(tensor)
        objects = self._objects
        if key in objects:
            objects[key] |= bits
            return
        self._remember(objects, key, -key - 1, tensor, bits)  # negative ref keys: never an id(storage)

    def add_storage(self, storage: Any, bits: int) -> None:
        key = id(storage)
        labels = self._labels
        if key in labels:
            labels[key] |= bits
            return
        self._remember(labels, key, key, storage, bits)

    def _remember(self, table: dict[int, int], key: int, ref_key: int, target: Any, bits: int) -> None:
        """``table[key] = bits`` for as long as ``target`` lives: once it dies, a new object may reuse its id."""
        refs = self._refs

        def dead(_: Any) -> None:
            table.pop(key, None)
            refs.pop(ref_key, None)

        refs[ref_key] = weakref.ref(target, dead)
        table[key] = bits

    def forget_id(self, obj_id: int) -> None:
        """Forget the id labels of ``obj_id`` (it left the worker); memory labels die with their memory."""
        self._by_id.pop(obj_id, None)

    def clear(self) -> None:
        self._labels.clear()
        self._refs.clear()
        self._objects.clear()
        self._by_id.clear()

    def __len__(self) -> int:
        return len(self._labels) + len(self._objects) + len(self._by_id)

    def __repr__(self) -> str:
        return (
            f"StorageLabels({len(self._labels)} storages, {len(self._objects)} tensors without storage, "
            f"{len(self._by_id)} objects)"
        )
