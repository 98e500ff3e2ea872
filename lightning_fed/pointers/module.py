"""Sending whole modules: every parameter and buffer object becomes a pointer in place, and comes back in place.

``send_module`` gives each parameter/buffer's worker its own copy and turns the local tensor *object* into a
:class:`PointerTensor` with :func:`torch.utils.swap_tensors`, so every reference to it (the module, an optimizer
built before ``send``, a tied weight) now points to the worker; memory nothing else of the sender reaches is handed
over instead of copied (:mod:`lightning_fed.pointers.handover`). ``get_module`` does the reverse, and the worker's
former objects let go of the memory that came home. An optimizer then
steps the worker's tensors through the pointers; its per-element state (momentum buffers, Adam moments: the state
tensors shaped like their parameter) follows the parameter from worker to worker and home again, while scalar
state such as Adam's ``step`` stays with the optimizer. Between remote sites, which do not connect to one another,
the state passes through this process (a ``get`` under the first site's policy, then a ``send``). A parameter's
gradient travels with it; a worker in this process keeps it aside until something there could see it
(:mod:`lightning_fed.workers.outbox`), so the ``optimizer.zero_grad()`` that follows ``model.send()`` in the seed's
loop costs no command.

Example:
    >>> import torch, lightning_fed as sy
    >>> alice = sy.VirtualWorker(id="alice")
    >>> model = torch.nn.Linear(2, 1)
    >>> weight = model.weight
    >>> _ = sy.send(model, alice)
    >>> type(model.weight).__name__, model.weight is weight, len(alice.objects)
    ('PointerTensor', True, 2)
    >>> _ = sy.get(model)
    >>> type(model.weight).__name__, len(alice.objects)
    ('Parameter', 0)
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lightning_fed.exceptions import PointerError
from lightning_fed.pointers.grads import can_defer_grad, defer_grad
from lightning_fed.pointers.handover import handed_over, let_go, sole_grad
from lightning_fed.pointers.pointer_tensor import PointerTensor, check_worker
from lightning_fed.pointers.pysyft_methods import check_gc_flag
from lightning_fed.pointers.transfer import send_tensor
from lightning_fed.workers.base import BaseWorker, me
from lightning_fed.workers.messages import DeleteMessage, ObjectMessage
from lightning_fed.workers.outbox import SNAPSHOTS
from lightning_fed.workers.store import new_object_id


def _module_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
    """Every distinct parameter and buffer object of ``module`` (tied weights once), with a name for errors and
    whether it sits in a parameter slot."""
    seen: set[int] = set()
    found: list[tuple[str, torch.Tensor, bool]] = []
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for kind, parameter in ((sub._parameters, True), (sub._buffers, False)):
            for name, tensor in kind.items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                found.append((f"{prefix}.{name}" if prefix else name, tensor, parameter))
    return found


def _like(template: torch.Tensor, data: torch.Tensor, parameter: bool = False) -> torch.Tensor:
    """A new tensor object over ``data`` of the template's kind (Parameter or plain; a Parameter too where
    ``parameter``), grad and attributes kept."""
    if isinstance(template, nn.Parameter) or parameter:
        kind = type(template) if isinstance(template, nn.Parameter) else nn.Parameter
        fresh = kind(data, requires_grad=template.requires_grad)
    else:
        fresh = data.requires_grad_(template.requires_grad) if template.requires_grad else data
    if template.grad is not None:
        fresh.grad = template.grad
    fresh.__dict__.update(template.__dict__)
    return fresh


def _swap(name: str, local: torch.Tensor, other: torch.Tensor) -> None:
    if weakref.getweakrefs(local):
        raise PointerError(
            f"cannot move module tensor {name!r}: something holds a weak reference to it (weakref.ref, a "
            "WeakKeyDictionary...), and torch.utils.swap_tensors, which turns it into a pointer in place, refuses "
            "tensors with weak references. Drop those references first (recurrent modules are handled)."
        )
    try:
        torch.utils.swap_tensors(local, other)
    except RuntimeError as err:
        raise PointerError(
            f"cannot move module tensor {name!r}: {err}. This happens while an autograd graph that has not run "
            "backward() still uses it; call backward() or drop that graph's outputs first."
        ) from err


@contextlib.contextmanager
def _recurrent_weights_released(module: nn.Module) -> Iterator[None]:
    """Let ``swap_tensors`` turn the weights of ``nn.RNN``/``nn.LSTM``/``nn.GRU`` into pointers and back.

    Recurrent modules keep weak references to their weights (``_flat_weight_refs``), which ``swap_tensors``
    refuses; as their own ``_apply`` does for ``.to()``, drop them here and rebuild them after the swap (the weights
    are flattened for cuDNN again only when they are local).
    """
    recurrent = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    for rnn in recurrent:
        rnn._flat_weight_refs = []
    try:
        yield
    finally:
        for rnn in recurrent:
            rnn._flat_weights = [getattr(rnn, name, None) for name in rnn._flat_weights_names]
            rnn._flat_weight_refs = [None if w is None else weakref.ref(w) for w in rnn._flat_weights]
            remote = any(isinstance(w, PointerTensor) for w in rnn._flat_weights)
            handle = _ZERO_STATE_HOOKS.pop(rnn, None)
            if handle is not None:
                handle.remove()
            if remote:
                _ZERO_STATE_HOOKS[rnn] = rnn.register_forward_pre_hook(_zero_state_at_the_worker, with_kwargs=True)
            else:
                rnn.flatten_parameters()


_ZERO_STATE_HOOKS: weakref.WeakKeyDictionary[nn.RNNBase, Any] = weakref.WeakKeyDictionary()


def _zero_state_at_the_worker(rnn: nn.RNNBase, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """torch's recurrent modules make a missing initial state here (``torch.zeros``); while the weights are at a
    worker, make it there instead (``input.new_zeros``), so that ``lstm(x)`` runs on pointers as it does locally."""
    x = args[0] if args else kwargs.get("input")
    if type(x) is not PointerTensor or (len(args) > 1 and args[1] is not None) or kwargs.get("hx") is not None:
        return None
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    batch = (x.shape[0 if rnn.batch_first else 1],) if x.dim() == 3 else ()  # an unbatched input has no batch dim
    out = rnn.proj_size if getattr(rnn, "proj_size", 0) > 0 else rnn.hidden_size
    hx: Any = x.new_zeros((layers, *batch, out))
    if isinstance(rnn, nn.LSTM):
        hx = (hx, x.new_zeros((layers, *batch, rnn.hidden_size)))
    kwargs = {key: value for key, value in kwargs.items() if key not in ("input", "hx")}
    return (x, hx, *args[2:]), kwargs


def send_module(module: nn.Module, worker: BaseWorker, garbage_collect_data: bool = True) -> nn.Module:
    """Send every parameter and buffer of ``module`` to ``worker``; returns ``module`` (now holding pointers).

    With ``garbage_collect_data=False``, dropping the module (its pointers) leaves the tensors at the worker.
    """
    check_worker(worker)
    check_gc_flag(garbage_collect_data)
    _ensure_optimizer_state_follows()
    if worker is me:
        return get_module(module)
    with _recurrent_weights_released(module):
        return _send_module(module, worker, garbage_collect_data)


def _send_module(module: nn.Module, worker: BaseWorker, frees: bool) -> nn.Module:
    done: list[tuple[str, torch.Tensor]] = []
    try:
        for name, tensor, _ in _module_tensors(module):
            if isinstance(tensor, PointerTensor):
                tensor.move(worker)
                tensor.garbage_collect_data = frees
                continue
            own_grad = sole_grad(tensor)  # asked before `grad` below holds the gradient too
            grad = tensor.grad
            deferred = grad is not None and can_defer_grad(grad, worker)
            with torch.no_grad():  # copied (or handed over) before anything changes: a failure leaves the module as is
                copy = _like(tensor, handed_over(tensor))
                if grad is not None:
                    copy.grad = None if deferred else own_grad if own_grad is not None else grad.detach().clone()
                snapshot = None if not deferred else own_grad if own_grad is not None else SNAPSHOTS.copy_of(grad)
            obj_id = new_object_id()
            me._send(ObjectMessage(obj_id, copy), worker)
            ptr = PointerTensor._make(worker, obj_id, copy.shape, copy.dtype, copy.device, me, copy.layout)
            ptr._frees = frees
            try:
                _swap(name, tensor, ptr)
            except PointerError:
                ptr._state = "deleted"
                me._send(DeleteMessage(obj_id), worker)
                raise
            if snapshot is not None:  # `tensor` is the pointer now (swapped); its gradient follows, kept aside
                defer_grad(tensor, snapshot, pooled=own_grad is None)
            done.append((name, tensor))
    except BaseException:
        for name, tensor in done:  # leave the module as it was
            _fetch_into(name, tensor)
        raise
    return module


def _fetch_into(name: str, ptr: PointerTensor, parameter: bool = False) -> None:
    remote = ptr.get()
    fresh = _like(remote, remote.detach(), parameter)  # a new tensor object over the same storage: no copy
    _swap(name, ptr, fresh)
    let_go(remote)  # the worker's graph keeps nothing of the memory that came home


def get_module(module: nn.Module) -> nn.Module:
    """Bring every parameter and buffer of ``module`` back from its worker, in place; returns ``module``."""
    with _recurrent_weights_released(module):
        for name, tensor, parameter in _module_tensors(module):
            if isinstance(tensor, PointerTensor):  # a Parameter in a parameter slot (model.copy() clones plain ones)
                _fetch_into(name, tensor, parameter)
    return module


def module_location(module: nn.Module) -> BaseWorker | None:
    """The worker holding ``module``'s tensors, or ``None`` when they are all local."""
    for _, tensor, _ in _module_tensors(module):
        if isinstance(tensor, PointerTensor):
            return tensor.location
    return None


# -- optimizer state follows its parameter ---------------------------------------------------------------------------
_follow_handle: Any = None


def _ensure_optimizer_state_follows() -> None:
    """Install (once, on the first module ``send``) the global optimizer pre-step hook that moves state."""
    global _follow_handle
    if _follow_handle is None:
        _follow_handle = register_optimizer_step_pre_hook(_state_follows_params)


def _travels(key: Any, value: torch.Tensor, param: torch.Tensor) -> bool:
    if value.shape != param.shape:
        return False
    return not (value.dim() == 0 and key == "step")


def _state_follows_params(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    state = optimizer.state
    if not state:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            entries = state.get(param)
            if not entries:
                continue
            target = param.location if type(param) is PointerTensor else None
            for key, value in entries.items():
                if type(value) is PointerTensor:
                    if value.location is not target:
                        entries[key] = _follow(value, target)
                elif target is not None and isinstance(value, torch.Tensor) and _travels(key, value, param):
                    entries[key] = send_tensor(value, target)


def _follow(value: PointerTensor, target: BaseWorker | None) -> torch.Tensor:
    """``value`` brought to ``target`` (home when ``None``): moved directly between workers in this process, and
    through this process when either end is a remote site (sites do not connect to one another)."""
    if target is None:
        return value.get()
    if getattr(value.location, "remote", False) or getattr(target, "remote", False):
        return send_tensor(value.get(), target)
    return value.move(target)


def get_optimizer_state(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Bring ``optimizer``'s state to where its parameters are now (home, after ``model.get()``), without a step.

    State otherwise moves lazily, at the next ``optimizer.step()``; call this before ``optimizer.state_dict()``.
    """
    _state_follows_params(optimizer, (), {})
    return optimizer
