"""The grad epoch: a process-wide counter of the events that may change what a worker's ``tensor.grad`` refers to.

A pointer may keep the pointer its ``.grad`` read returned (see :mod:`lightning_fed.pointers.pointer_tensor`) only
while this counter is unchanged. Every message an in-process worker answers moves it (before and after the
handler runs), except the commands in :data:`GRAD_NEUTRAL`: property reads and the in-place arithmetic that
optimizers run, none of which assigns a ``.grad`` or replaces a stored object. Sessions (code run at a worker),
``clear_objects()`` and ``place_elsewhere()`` move it as well. A worker that answers messages elsewhere (a
``RemoteWorker``) does not move it, so nothing is kept for pointers to such workers.

Example:
    >>> from lightning_fed.workers.messages import CommandMessage, DeleteMessage
    >>> changes_grads(CommandMessage("torch.Tensor.grad.__get__", ())), changes_grads(DeleteMessage(1))
    (False, True)
    >>> before = grad_epoch(); bump_grad_epoch(); grad_epoch() == before + 1
    True
"""

from __future__ import annotations

from typing import Any

from lightning_fed.workers.messages import CommandMessage

GRAD_NEUTRAL = frozenset(
    {f"torch.Tensor.{name}" for name in ("add_", "sub_", "mul_", "div_", "addcmul_", "addcdiv_", "lerp_", "sqrt_")}
)
"""Commands (besides property reads, ``....__get__``) that never assign a ``.grad`` nor replace a stored object."""


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


EPOCH = _Counter()
"""The counter itself (``EPOCH.value``), read directly on the pointers' hot path."""


def grad_epoch() -> int:
    """The current grad epoch."""
    return EPOCH.value


def bump_grad_epoch() -> None:
    """Something may have changed a worker's ``.grad`` attributes or stored objects: forget every kept ``.grad``."""
    EPOCH.value += 1


def changes_grads(message: Any) -> bool:
    """Whether answering ``message`` may assign a ``.grad`` or replace an object (everything but neutral commands)."""
    if type(message) is not CommandMessage:
        return True
    command = message.command
    return not (command.endswith(".__get__") or command in GRAD_NEUTRAL)
