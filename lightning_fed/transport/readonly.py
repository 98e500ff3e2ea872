"""Which arguments a command writes: what a site checks, before it runs a command, against its read-only datasets.

A command writes to an argument when it changes it in place (``zero_``, ``x[i] = ...``, ``+=``, ``out=``,
``inplace=True``, a batch norm's running statistics, an embedding renormalised with ``max_norm``), changes what it is
(``resize_``, ``set_``, ``requires_grad_``, ``detach_``) or sets one of its attributes (``x.data = y``,
``x.grad = y``: both ``x`` and ``y``, whose memory a later ``backward()`` could accumulate into). The site then asks
whether any of those arguments shares memory with one of its datasets (the dataset itself, or a view of it such as
``data[0:1]`` or ``data.view(-1)`` made by an earlier command under an id of its own): see
:meth:`~lightning_fed.transport.server.SiteWorker.add_dataset`.

Example:
    >>> from lightning_fed.workers.messages import ObjectRef
    >>> written_ids("torch.Tensor.zero_", (ObjectRef(3),), {})
    [3]
    >>> written_ids("torch.add", (ObjectRef(3), ObjectRef(4)), {"out": ObjectRef(5)})
    [5]
    >>> written_ids("torch.nn.functional.relu", (ObjectRef(3), True), {})
    [3]
    >>> written_ids("torch.Tensor.sum", (ObjectRef(3),), {}), written_ids("torch.Tensor.copy_", (1, ObjectRef(3)), {})
    ([], [])
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from lightning_fed.workers.commands import resolve_command
from lightning_fed.workers.messages import ObjectRef

_IN_PLACE_DUNDERS = frozenset(
    f"__{name}__"
    for name in ("setitem", "delitem", "iadd", "isub", "imul", "idiv", "itruediv", "ifloordiv", "imod", "ipow",
                 "imatmul", "iand", "ior", "ixor", "ilshift", "irshift")
)  # fmt: skip
_RUNNING_STATS = ("batch_norm", "instance_norm")  # torch.batch_norm, F.instance_norm, torch.batch_norm_update_stats...
_RENORMED = frozenset({"torch.nn.functional.embedding", "torch.nn.functional.embedding_bag"})  # weight, max_norm
_NAMED = frozenset({"inplace", "out", "running_mean", "running_var"})


def written_ids(command: str, args: tuple, kwargs: dict) -> list[int]:
    """The ids of the objects (:class:`ObjectRef` in ``args`` and ``kwargs``, at any depth) that ``command`` would
    write to, or make memory it could later write (see the module docstring); conservative where unsure."""
    short = command.rsplit(".", 1)[-1]
    found: list[int] = []
    if short == "__set__":
        _refs(args[:2], found)
    elif (short.endswith("_") and not short.endswith("__")) or short in _IN_PLACE_DUNDERS:
        _refs(args[:1], found)
    _refs(kwargs.get("out"), found)
    bound = _bind(command, args, kwargs)
    stats = any(name in command for name in _RUNNING_STATS)
    if bound is not None:
        if bound.get("inplace"):
            _refs(next(iter(bound.values()), None), found)  # the input
        _refs(bound.get("out"), found)
        if command in _RENORMED and bound.get("max_norm") is not None:
            _refs(bound.get("weight"), found)
        if stats:
            _refs((bound.get("running_mean"), bound.get("running_var")), found)
    elif stats:  # a builtin (no signature): every tensor but the input may be a running statistic
        _refs((args[1:], {k: v for k, v in kwargs.items() if k != "input"}), found)
    return found


def _refs(node: Any, found: list[int]) -> None:
    kind = type(node)
    if kind is ObjectRef:
        found.append(node.obj_id)
    elif kind is tuple or kind is list:
        for item in node:
            _refs(item, found)
    elif kind is dict:
        for item in node.values():
            _refs(item, found)


def _bind(command: str, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The arguments by parameter name, for a Python function with a parameter that says what it writes
    (``inplace``, ``out``, running statistics, an embedding's ``max_norm``); ``None`` otherwise."""
    signature = _signature(command)
    if signature is None:
        return None
    try:
        return dict(signature.bind(*args, **kwargs).arguments)
    except TypeError:  # the call itself will fail the same way, before it writes anything
        return None


@functools.cache
def _signature(command: str) -> inspect.Signature | None:
    func = resolve_command(command)
    if func is None or not (inspect.isfunction(func) or inspect.ismethod(func)):
        return None
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    return signature if command in _RENORMED or _NAMED & signature.parameters.keys() else None


def storage_key(tensor: torch.Tensor) -> int:
    """What two tensors that share memory have in common: their storage (a view shares its base's); a tensor with
    no storage (sparse...) is only itself."""
    try:
        return tensor.untyped_storage()._cdata
    except (NotImplementedError, RuntimeError):
        return id(tensor)
