"""Private torch APIs, each behind a function that answers ``None`` (unknown) where this torch lacks it.

Example:
    >>> import torch
    >>> t = torch.zeros(3)
    >>> storage_holders(t)
    1
    >>> view = t[1:]
    >>> storage_holders(t)
    2
"""

from __future__ import annotations

import torch


def storage_holders(tensor: torch.Tensor) -> int | None:
    """How many tensors (views and ``.data`` aliases included) hold ``tensor``'s memory; ``None``: torch does not
    say. A dense tensor only: sparse and other layouts have no single storage."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    storage = tensor.untyped_storage()
    return int(count(storage._cdata)) - 1  # less `storage`, the object made for this call


def tensor_holders(tensor: torch.Tensor) -> int | None:
    """How many C++ references hold ``tensor`` itself (its Python object is one; a parameter's ``.grad`` field is
    another); ``None``: torch does not say. ``torch.utils.swap_tensors`` checks the same count."""
    use_count = getattr(tensor, "_use_count", None)
    return None if use_count is None else int(use_count())
