"""Commands that hand out memory nothing has written yet, zero-filled at the worker before anyone can read it.

``x.new_empty(n)``, ``torch.empty_like(x)`` and a ``resize_`` that grows a storage return memory the allocator may
have just taken back from a freed tensor. A worker's freed tensors include its private data and what was computed
from it, while such a result carries only its inputs' labels (public, for a public ``x``): reading it would hand
the freed private bytes out as public. So a worker zeroes that memory as it makes it (the whole storage, which
``as_strided`` could reach, not only the result's view). What torch leaves undefined becomes zeros; nothing else
changes.

Example:
    >>> import torch
    >>> x = torch.arange(4.0)
    >>> clear = uninitialized_memory("torch.Tensor.resize_", (x, 6))
    >>> clear(x.resize_(6)); x
    tensor([0., 1., 2., 3., 0., 0.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_FRESH = frozenset({"torch.empty_like", "torch.Tensor.new_empty", "torch.Tensor.new_empty_strided"})
_GROWING = frozenset({"torch.Tensor.resize_", "torch.Tensor.resize_as_"})


def uninitialized_memory(label: str, args: tuple) -> Callable[[Any], None] | None:
    """How to clear what command ``label`` on ``args`` leaves unwritten, as a function of its result; ``None`` for
    the commands that write all they allocate (all but a few)."""
    if label in _FRESH:
        return _zero_storage
    if label in _GROWING and args and _strided(args[0]):
        before = args[0].untyped_storage().nbytes()
        return lambda result: _zero_beyond(result, before)
    return None


def _strided(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.layout is torch.strided


def _zero_storage(result: Any) -> None:
    if _strided(result):
        result.untyped_storage().fill_(0)
    elif isinstance(result, torch.Tensor):  # a sparse layout asked of new_empty: no values yet, zeros as a fallback
        with torch.no_grad():
            result.zero_()


def _zero_beyond(result: Any, start: int) -> None:
    """Zero the bytes of ``result``'s storage from ``start`` on (what a growing resize added)."""
    if not _strided(result):
        return
    storage = result.untyped_storage()
    if storage.nbytes() > start:
        raw = torch.empty(0, dtype=torch.uint8, device=result.device).set_(storage)
        raw[start:].zero_()
