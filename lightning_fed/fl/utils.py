"""Model arithmetic for hand-written federated loops (PySyft's ``syft.frameworks.torch.fl.utils``).

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = a.weight.fill_(1.0), b.weight.fill_(3.0)
    >>> federated_avg({"bob": a, "alice": b}).weight
    Parameter containing:
    tensor([[2.]], requires_grad=True)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_fed.aggregation.functional import is_float, weighted_mean
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers.pointer_tensor import PointerTensor


def _state(model: nn.Module, what: str, index: Any) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise FederatedConfigError(f"{what}: `{index}` is a {type(model).__name__}, not an nn.Module.")
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    remote = sorted(name for name, t in tensors.items() if isinstance(t, PointerTensor))
    if remote:
        raise FederatedConfigError(
            f"{what}: `{index}` still holds pointers ({', '.join(remote[:3])}...): bring the model back with "
            "`model.get()` first (or `.move()` the models to one trusted worker and average the weights there)."
        )
    return tensors


def federated_avg(models: Mapping[Any, nn.Module] | Sequence[nn.Module]) -> nn.Module:
    """A new model whose parameters and floating-point buffers are the plain mean of ``models``' (summed in float64,
    divided at the end); integer buffers (``num_batches_tracked``) are the first model's. ``models`` is a dict
    (worker id -> model, as PySyft took) or a list; the models are left unchanged.
    """
    named = list(models.items()) if isinstance(models, Mapping) else list(enumerate(models))
    if not named:
        raise FederatedConfigError("federated_avg() got no models: pass a dict {worker id: model} or a list.")
    states = [_state(model, "federated_avg()", f"models[{key!r}]") for key, model in named]
    names = list(states[0])
    for (key, _), state in zip(named, states, strict=True):
        if list(state) != names or any(state[n].shape != states[0][n].shape for n in names):
            raise FederatedConfigError(
                f"federated_avg(): `models[{key!r}]` does not have the same tensors as `models[{named[0][0]!r}]`: "
                "average models of one architecture."
            )
    floats = [n for n in names if is_float(states[0][n])]
    means = weighted_mean([[state[n] for n in floats] for state in states], [1.0] * len(states))
    result = copy.deepcopy(named[0][1])
    target = _state(result, "federated_avg()", "the result")
    with torch.no_grad():
        for name, mean in zip(floats, means, strict=True):
            target[name].copy_(mean)
    return result


def add_model(dst_model: nn.Module, src_model: nn.Module) -> nn.Module:
    """``dst_model``'s parameters += ``src_model``'s (matched by name), in place; returns ``dst_model``."""
    dst = dict(dst_model.named_parameters())
    src = dict(src_model.named_parameters())
    if list(dst) != list(src) or any(dst[n].shape != src[n].shape for n in dst):
        raise FederatedConfigError("add_model(): the two models do not have the same parameters: add models of one "
                                   "architecture.")  # fmt: skip
    with torch.no_grad():
        for name, param in dst.items():
            param.add_(src[name])
    return dst_model


def scale_model(model: nn.Module, scale: float) -> nn.Module:
    """``model``'s parameters *= ``scale``, in place; returns ``model``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise FederatedConfigError(f"scale_model(): `scale={scale!r}` is not valid: pass a number, e.g. 0.5.")
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(scale)
    return model


def accuracy(pred_softmax: torch.Tensor, target: torch.Tensor) -> float:
    """The fraction of rows whose highest score (``pred_softmax.argmax(dim=1)``) is the ``target`` class.

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    if pred_softmax.dim() != 2 or target.numel() != pred_softmax.shape[0]:
        raise FederatedConfigError(
            f"accuracy(): `pred_softmax` of shape {tuple(pred_softmax.shape)} and `target` of shape "
            f"{tuple(target.shape)} do not fit: pass (N, classes) scores and N class indices."
        )
    if target.numel() == 0:
        raise FederatedConfigError("accuracy(): `target` is empty: pass at least one prediction.")
    return (pred_softmax.argmax(dim=1) == target.reshape(-1)).sum().item() / target.numel()
