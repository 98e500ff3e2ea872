"""The messages workers exchange: frozen dataclasses, one per kind of request.

A message carries object ids (:class:`ObjectRef`) where the sender held pointers; the worker answers a command with
:class:`TensorDescriptor` for each new tensor it stored, an :class:`ObjectRef` where the result is one of the
command's own inputs (in-place operations), and plain values for everything that is not a tensor.

Example:
    >>> msg = CommandMessage("torch.add", (ObjectRef(1), 2), {})
    >>> msg.command, msg.args
    ('torch.add', (ObjectRef(obj_id=1), 2))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

LABEL_PRIVATE = 1  # an object's privacy labels travel with it as bits: the worker's data, or computed from it
LABEL_MODEL = 2  # model parameters, their gradients and updates


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Names an object that lives in the receiving worker's store."""

    obj_id: int


@dataclass(frozen=True, slots=True)
class TensorDescriptor:
    """What a worker tells the sender about a tensor it stored: enough to build a pointer, never the values.

    ``layout`` never changes for a stored tensor (torch refuses to turn a dense tensor sparse in place, through
    ``.data``, ``set_`` or ``copy_``), so a pointer answers ``is_sparse`` and ``layout`` from it without asking.
    """

    obj_id: int
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    layout: torch.layout = torch.strided


@dataclass(frozen=True, slots=True)
class ObjectMessage:
    """Store ``obj`` under ``obj_id`` (the receiving end of ``send`` and ``move``); ``labels`` (bits of
    :data:`LABEL_PRIVATE`, :data:`LABEL_MODEL`) say what it was at the worker it comes from: an object moved from
    another worker's data arrives private. The owner's own tensors carry none."""

    obj_id: int
    obj: Any
    labels: int = 0


@dataclass(frozen=True, slots=True)
class DeferredGradMessage:
    """Keep ``grad``, the gradient object ``param_id`` carried when it was sent, aside until something at the worker
    could see it (:mod:`lightning_fed.workers.outbox`); answered with the delivery's handle. In-process workers only.
    ``pooled``: ``grad`` is a copy from the sender's snapshot pool, which takes it back if nothing at the worker saw
    it."""

    param_id: int
    grad: torch.Tensor
    pooled: bool = True


@dataclass(frozen=True, slots=True)
class GetMessage:
    """Hand object ``obj_id`` back to the sender and forget it (``get``); ``keep=True`` hands a copy and keeps it."""

    obj_id: int
    keep: bool = False


@dataclass(frozen=True, slots=True)
class MoveMessage:
    """Hand object ``obj_id`` to worker ``to``, which stores it under ``new_id`` (``pointer.move(to)``)."""

    obj_id: int
    to: Any
    new_id: int


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """Forget object ``obj_id``; sent when the last pointer to it goes away. Unknown ids are ignored."""

    obj_id: int


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """Run the allowlisted command ``command`` on the worker's objects named in ``args``/``kwargs``.

    ``grad_enabled`` is the sender's autograd mode (``torch.is_grad_enabled()``), under which the worker runs the
    command; ``None`` (in process) runs it under the receiving thread's mode, which is the sender's own thread. A
    remote worker always sends it: an optimizer's in-place step runs under ``torch.no_grad()`` at the site too.
    """

    command: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad_enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class PlanMessage:
    """Run the plan the worker's owner installed under ``plan`` (see ``BaseWorker.install_plan``)."""

    plan: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchMessage:
    """Find the tensors of which every item of ``query`` is the id, one of the tags, or part of the description."""

    query: tuple[str, ...]

    def matches(self, obj_id: int, tags: frozenset[str], description: str | None) -> bool:
        """Every item names the object's id, one of its tags, or a part of its description."""
        return all(
            item == str(obj_id) or item in tags or (description is not None and item in description)
            for item in self.query
        )


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One tensor a search found: how to point to it, and its (public) tags and description; never its values."""

    descriptor: TensorDescriptor
    tags: frozenset[str]
    description: str | None


@dataclass(frozen=True, slots=True)
class DatasetMessage:
    """Store, under ``obj_id``, a ``TensorDataset`` of the worker's tensors ``tensor_ids`` (PySyft's ``BaseDataset``
    of pointers, made into a shard that a ``FederatedDataLoader`` can batch); nothing leaves the worker."""

    obj_id: int
    tensor_ids: tuple[int, ...]


def summary(message: Any) -> str:
    """What a verbose worker prints about a message: its kind and what it names, never the values it carries.

    Example:
        >>> summary(CommandMessage("torch.add", (ObjectRef(1), 2))), summary(DeleteMessage(7))
        ('CommandMessage torch.add', 'DeleteMessage object 7')
    """
    detail = getattr(message, "command", None) or getattr(message, "plan", None)
    if detail is None and hasattr(message, "obj_id"):
        detail = f"object {message.obj_id}"
    if detail is None and hasattr(message, "param_id"):
        detail = f"gradient of object {message.param_id}"
    if detail is None and hasattr(message, "query"):
        detail = f"query {list(message.query)}"
    return type(message).__name__ + (f" {detail}" if detail is not None else "")
