"""What a message's arguments become at a worker (its own objects for :class:`ObjectRef`, and checked values),
and what leaves it after a command: a failed command's message (:func:`withheld`) and a kept copy (:func:`copy_out`).

A command takes the worker's objects, tensors (copied, as a real transfer would copy them) and plain values; any other
object is refused, since torch hands every argument that defines ``__torch_function__`` the worker's real tensors.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from lightning_fed.exceptions import LightningFedError, WorkerError
from lightning_fed.workers.messages import ObjectRef
from lightning_fed.workers.store import ObjectStore


def resolve_refs(obj: Any, store: ObjectStore, worker_id: Hashable, inputs: dict[int, int], command: str = "") -> Any:
    """``obj`` with each :class:`ObjectRef` replaced by the worker's object (its id noted in ``inputs``); for a
    ``command``, every other value is checked by :func:`_command_arg`.

    Example:
        >>> import torch
        >>> store = ObjectStore(); store.set(1, torch.ones(2))
        >>> inputs = {}
        >>> resolve_refs((ObjectRef(1), 2.0), store, "w", inputs, "torch.mul"), list(inputs.values())
        ((tensor([1., 1.]), 2.0), [1])
        >>> resolve_refs((ObjectRef(1), object()), store, "w", {}, "torch.mul")
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.WorkerError: worker 'w' refuses to run torch.mul with an argument of type object: ...
    """
    kind = type(obj)
    if kind is ObjectRef:
        try:
            value = store.objects[obj.obj_id]
        except KeyError:
            raise WorkerError(
                f"worker {worker_id!r} holds no object {obj.obj_id}: {store.why_missing(obj.obj_id)}."
            ) from None
        inputs[id(value)] = obj.obj_id
        return value
    if kind is tuple or kind is list:
        return kind(resolve_refs(item, store, worker_id, inputs, command) for item in obj)
    if kind is dict:
        return {key: resolve_refs(value, store, worker_id, inputs, command) for key, value in obj.items()}
    if not command or isinstance(obj, _PLAIN_ARGS):
        return obj
    return _command_arg(obj, worker_id, command)


PLAIN_RESULTS = (int, float, complex, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format,
                  torch.Size)  # fmt: skip
_PLAIN_ARGS = (int, float, complex, str, bytes, type(None), type(...), torch.dtype, torch.device, torch.layout,
               torch.memory_format, torch.Size, torch.Generator)  # fmt: skip


def _command_arg(obj: Any, worker_id: Hashable, command: str) -> Any:
    """A value a command message carries (not an object of the worker): plain values pass; a tensor is copied, as a
    real transfer would, so that the command cannot write into the sender's tensor; anything else is refused (an
    object with ``__torch_function__`` would be handed the worker's tensors)."""
    kind = type(obj)
    if kind is tuple or kind is list:
        return kind(_command_arg(item, worker_id, command) for item in obj)
    if isinstance(obj, _PLAIN_ARGS):
        return obj
    if kind is slice:
        _command_arg((obj.start, obj.stop, obj.step), worker_id, command)
        return obj
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        with torch.no_grad():
            copy = obj.clone()
        return copy.requires_grad_(obj.requires_grad) if obj.requires_grad else copy
    raise WorkerError(
        f"worker {worker_id!r} refuses to run {command} with an argument of type {kind.__name__}: a command takes "
        "the worker's objects (pointers), tensors and plain values only. Send the object first."
    )


def withheld(failure: Exception, guard: Any) -> bool:
    """Whether a failed command's message stays at the worker: torch's messages can quote private values; this
    library's own (a :class:`~lightning_fed.exceptions.LightningFedError`) name types and shapes only, and an open
    policy (``release_data``) releases the data anyway."""
    return not isinstance(failure, LightningFedError) and not guard.policy.release_data


def copy_out(obj: Any) -> Any:
    """What ``get(keep=True)`` hands out: a detached copy of a tensor (``requires_grad`` kept), anything else as is."""
    if isinstance(obj, torch.Tensor):
        copy = obj.detach().clone()
        copy.requires_grad_(obj.requires_grad)
        return copy
    return obj
