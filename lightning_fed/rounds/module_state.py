"""What a worker's local training may change in a module besides its parameters, and how the rounds put it back.

A worker may keep tensors in plain attributes (an LSTM's ``self.hidden``); each worker starts from the global
module's, as it starts from the global parameters. torchmetrics metrics are left alone: they aggregate across
workers on purpose.

Example:
    >>> import torch
    >>> module = torch.nn.Linear(2, 1)
    >>> module.hidden = torch.zeros(1)
    >>> saved = plain_tensor_attributes(module)
    >>> module.hidden = torch.ones(1)
    >>> restore_plain_tensor_attributes(module, saved); module.hidden
    tensor([0.])
    >>> [tuple(t.shape) for t in model_tensors(module)]
    [(1, 2), (1,)]
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn


def _tensor_like(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, Tensor) for v in value)


def is_metric(value: Any) -> bool:
    """Whether ``value`` is a torchmetrics ``Metric`` (without importing torchmetrics)."""
    return _is_metric_class(type(value))


@functools.lru_cache(maxsize=256)
def _is_metric_class(cls: type) -> bool:
    return any(c.__name__ == "Metric" and c.__module__.startswith("torchmetrics") for c in cls.__mro__)


def _cloned(value: Any) -> Any:
    """A tensor, or a tuple/list of tensors, cloned (``None`` as is)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    return value if value is None else type(value)(v.detach().clone() for v in value)


def plain_tensor_attributes(module: nn.Module) -> dict[tuple[int, str], Any]:
    """The tensors (and tuples of tensors, and ``None``) a module and its submodules keep in plain attributes (an
    LSTM's ``self.hidden``), cloned; torchmetrics metrics are left out (they aggregate across workers on purpose)."""
    out: dict[tuple[int, str], Any] = {}
    for sub in module.modules():
        if is_metric(sub):
            continue
        for name, value in vars(sub).items():
            if name.startswith("_") or not (value is None or _tensor_like(value)):
                continue
            out[(id(sub), name)] = _cloned(value)
    return out


def restore_plain_tensor_attributes(module: nn.Module, saved: dict[tuple[int, str], Any]) -> None:
    """Undo what a worker did to the plain tensor attributes since :func:`plain_tensor_attributes`."""
    for sub in module.modules():
        if is_metric(sub):
            continue
        for name, value in list(vars(sub).items()):
            if name.startswith("_") or not _tensor_like(value):
                continue
            key = (id(sub), name)
            if key in saved:
                setattr(sub, name, _cloned(saved[key]))
            else:
                delattr(sub, name)


def model_tensors(module: torch.nn.Module) -> list[Tensor]:
    """The tensors FedAvg averages: every parameter and buffer (floating and integer), each object once."""
    seen: set[int] = set()
    tensors = []
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            tensors.append(t)
    return tensors
