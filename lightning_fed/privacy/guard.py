"""``WorkerGuard``: one worker's labels and audit log under its :class:`~lightning_fed.privacy.DataAccessPolicy`.

``BaseWorker`` calls it around every command (:meth:`WorkerGuard.before` / :meth:`WorkerGuard.after`) and on every
request that would take an object out (:meth:`WorkerGuard.check` / :meth:`WorkerGuard.commit`). A command on
unlabelled (public) inputs costs one storage lookup per input and nothing else; on labelled ones, that same lookup
also gives the first labelled input and the tensors whose in-place writes :meth:`WorkerGuard.after` checks.

Example:
    >>> import torch
    >>> from lightning_fed.privacy import DataAccessPolicy
    >>> guard = DataAccessPolicy().guard("w", {})
    >>> guard.on_store(1, torch.utils.data.TensorDataset(torch.zeros(2)))  # a dataset arrives: private
    >>> guard.on_store(2, torch.ones(1))  # a tensor from the owner: public
    >>> guard.release(2, torch.ones(1), "get"), guard.audit_log[0].kind
    (tensor([1.]), 'tensor')
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_fed.exceptions import PermissionDeniedError
from lightning_fed.privacy.audit import AuditLog, ReleaseRequest, record
from lightning_fed.privacy.labels import MODEL, PRIVATE, StorageLabels, storage_of, tensors_in
from lightning_fed.privacy.shapes import SHAPE_FIX, plain_value_reason, shape_reason

if TYPE_CHECKING:
    from lightning_fed.privacy.policy import DataAccessPolicy

_BACKWARD = frozenset({"torch.Tensor.backward", "torch.autograd.backward"})
_STATS_FIRST = frozenset({"torch.nn.functional.batch_norm", "torch.nn.functional.instance_norm"})  # (x, mean, var..
_STATS_LATER = frozenset(
    {"torch.batch_norm", "torch.instance_norm", "torch.native_batch_norm", "torch._native_batch_norm_legit"}
)  # (x, weight, bias, mean, var, ...)


class _Pending:
    """What :meth:`WorkerGuard.before` learnt about a command on labelled inputs, for :meth:`WorkerGuard.after`."""

    __slots__ = ("bits", "first_id", "leaves", "shape_rule", "versions")

    def __init__(self, bits: int, first_id: int) -> None:
        self.bits = bits
        self.first_id = first_id
        self.versions: list[tuple[torch.Tensor, int]] = []
        self.leaves: list[torch.Tensor] | None = None
        self.shape_rule: str | None = None

    @property
    def private(self) -> bool:
        return bool(self.bits & PRIVATE)


class WorkerGuard:
    """One worker's privacy labels (by memory, see :mod:`~lightning_fed.privacy.labels`) and audit log."""

    __slots__ = ("audit_log", "labels", "policy", "worker_id")

    def __init__(self, policy: DataAccessPolicy, worker_id: Hashable, objects: Mapping[int, Any]) -> None:
        self.policy = policy
        self.worker_id = worker_id
        self.labels = StorageLabels()
        self.audit_log = AuditLog()
        for obj_id, obj in objects.items():  # unknown provenance: private (parameters stay model objects)
            self.labels.add(obj_id, obj, MODEL if isinstance(obj, nn.Parameter) else PRIVATE)

    # -- provenance -----------------------------------------------------------------------------------------------
    def on_store(self, obj_id: int, obj: Any, labels: int = 0) -> None:
        """An object arrived (``send``, ``federate``, ``move``) with the ``labels`` it had where it came from."""
        if isinstance(obj, nn.Parameter):
            labels |= MODEL
        elif not isinstance(obj, torch.Tensor):
            labels |= PRIVATE
        self.labels.forget_id(obj_id)
        self.labels.add(obj_id, obj, labels)
        grad = _grad(obj) if labels and storage_of(obj) is not None else None
        if grad is not None:
            self.labels.add_tensor(grad, labels)

    def before(self, label: str, objects: Mapping[int, Any], input_ids: Collection[int], args: tuple,
               kwargs: dict) -> _Pending | None:  # fmt: skip
        """Called before a command runs on the objects ``input_ids``: ``None`` when none carries a label (nothing to
        track); raises :class:`PermissionDeniedError` when its result shape would reveal private values."""
        of, by_storage = self.labels.of, self.labels.by_storage
        bits, first_id, tracked = 0, 0, []
        for obj_id in input_ids:  # one storage lookup per input
            obj = objects[obj_id]
            storage = storage_of(obj)
            found = by_storage.get(id(storage), 0) if storage is not None else of(obj_id, obj)
            if found and not bits:
                first_id = obj_id
            bits |= found
            if storage is not None or type(obj) is torch.Tensor:  # a sparse or MKL-DNN tensor: labelled as an object
                tracked.append(obj)
        if not bits:
            return None
        pending = _Pending(bits, first_id)
        if bits & PRIVATE:
            reason = shape_reason(label, args, kwargs, self._is_private)
            if reason is not None:
                pending.shape_rule = self._decide_command(pending, label, "shape", reason, SHAPE_FIX)
        pending.versions = [(t, t._version) for t in tracked]
        if label in _BACKWARD:
            roots = list(tensors_in(args[:1])) + list(tensors_in(kwargs.get("tensors")))
            pending.leaves = _leaves(roots)
        return pending

    def after(self, pending: _Pending, label: str, args: tuple, kwargs: dict, result: Any,
              objects: Mapping[int, Any]) -> None:  # fmt: skip
        """Label what a command on labelled inputs made or wrote; refuse a plain value computed from private ones."""
        bits, add = pending.bits, self.labels.add_tensor
        if type(result) is torch.Tensor:  # the common case: one new tensor
            add(result, bits)
        else:
            for tensor in tensors_in(result):
                add(tensor, bits)
        for tensor, version in pending.versions:  # in-place writes: copy_, add_, x[i] = ..., out=, _foreach_*_
            if tensor._version != version:
                add(tensor, bits)
        if label in _STATS_FIRST or label in _STATS_LATER:  # running statistics are written without a version bump
            for tensor in _running_stats(label, args, kwargs):
                add(tensor, (bits & ~PRIVATE) | MODEL)
        if pending.leaves is not None:
            self._label_gradients(pending.leaves, objects)
        if pending.shape_rule is not None:
            for tensor in tensors_in(result):
                self._record_command(pending, label, "shape", tuple(tensor.shape), pending.shape_rule)
        if pending.private:
            reason = plain_value_reason(label, result)
            if reason is not None:
                self._decide_command(pending, label, "value", reason, "DataAccessPolicy(release_data=True)")

    def _label_gradients(self, leaves: list[torch.Tensor], objects: Mapping[int, Any]) -> None:
        """After ``backward()`` on labelled inputs: every gradient it wrote is a model update (private as well when
        it is the gradient of a private tensor: a gradient with respect to data is not a model update)."""
        of, add = self.labels.of_tensor, self.labels.add_tensor
        plain = torch.Tensor  # a plain tensor answers at once; anything else (a pointer held here) only with storage
        retained = [t for t in objects.values() if (type(t) is plain or storage_of(t) is not None) and t.retains_grad]
        for tensor in leaves + retained:
            grad = tensor.grad
            if grad is not None:
                add(grad, MODEL | (of(tensor) & PRIVATE))

    def _is_private(self, tensor: Any) -> bool:
        return bool(self.labels.of_tensor(tensor) & PRIVATE)

    def _decide_command(self, pending: _Pending, label: str, kind: str, reason: str, fix: str) -> str:
        request = ReleaseRequest(self.worker_id, pending.first_id, kind, None, None, label, None, private=True)
        rule, refusal = self.policy.decide(request)
        if rule is None:
            self.audit_log.refused.append(record(request, refusal))
            raise PermissionDeniedError(
                f"worker {self.worker_id!r} refuses to run {label} on private inputs: {reason}. Compute what you "
                f"need at the worker and release a scalar or a model update, or let it run with {fix}."
            )
        if kind == "value":
            self.audit_log.records.append(record(request, rule))
        return rule

    def _record_command(self, pending: _Pending, label: str, kind: str, shape: tuple[int, ...], rule: str) -> None:
        request = ReleaseRequest(self.worker_id, pending.first_id, kind, shape, None, label, None, private=True)
        self.audit_log.records.append(record(request, rule))

    # -- release --------------------------------------------------------------------------------------------------
    def request(self, obj_id: int, obj: Any, command: str, destination: Hashable | None = None) -> ReleaseRequest:
        """What taking ``obj`` out means: its kind (data, scalar, parameter, update, tensor) from its labels."""
        tensor = isinstance(obj, torch.Tensor)
        plain = tensor and storage_of(obj) is not None
        bits = self.labels.of(obj_id, obj)
        grad = _grad(obj) if plain else None
        if grad is not None:
            bits |= self.labels.of_tensor(grad)
        private = bool(bits & PRIVATE) or not tensor
        if private:
            kind = "scalar" if tensor and obj.dim() == 0 else "data"
        elif bits & MODEL or isinstance(obj, nn.Parameter):
            kind = "parameter" if isinstance(obj, nn.Parameter) else "update"
        elif grad is not None:
            kind = "update"
        else:
            kind = "tensor"
        return ReleaseRequest(
            worker_id=self.worker_id,
            obj_id=obj_id,
            kind=kind,
            shape=tuple(obj.shape) if tensor else None,
            dtype=str(obj.dtype).removeprefix("torch.") if tensor else None,
            command=command,
            destination=destination,
            private=private,
        )

    def check(self, obj_id: int, obj: Any, command: str, destination: Hashable | None = None) -> tuple[Any, str]:
        """The request to take ``obj`` out and the rule that allows it; a refusal is recorded and raised. Nothing
        is recorded as released until :meth:`commit` (a ``move`` commits once the destination has the object)."""
        request = self.request(obj_id, obj, command, destination)
        rule, reason = self.policy.decide(request)
        if rule is None:
            self.audit_log.refused.append(record(request, reason))
            raise PermissionDeniedError(_refusal_message(request, reason))
        return request, rule

    def commit(self, request: ReleaseRequest, rule: str) -> None:
        self.audit_log.records.append(record(request, rule))
        if request.command != "to_here":
            self.labels.forget_id(request.obj_id)

    def release(self, obj_id: int, obj: Any, command: str, destination: Hashable | None = None) -> Any:
        """Check a request, audit it and return what leaves; raise if it is refused."""
        request, rule = self.check(obj_id, obj, command, destination)
        self.commit(request, rule)
        return outgoing(obj, request.private)

    def outgoing(self, obj: Any, request: ReleaseRequest) -> Any:
        """What leaves for ``obj`` once ``request`` is allowed (see :func:`outgoing`)."""
        return outgoing(obj, request.private)

    def labels_of(self, obj_id: int, obj: Any) -> int:
        """The labels an object carries out of this worker (its memory's and its gradient's)."""
        bits = self.labels.of(obj_id, obj)
        grad = _grad(obj) if storage_of(obj) is not None else None
        return bits | (self.labels.of_tensor(grad) if grad is not None else 0)

    def forget(self, obj_id: int) -> None:
        self.labels.forget_id(obj_id)

    def forget_all(self) -> None:
        self.labels.clear()

    def __repr__(self) -> str:
        return f"WorkerGuard({self.worker_id!r}, {self.labels!r})"


def outgoing(obj: Any, private: bool) -> Any:
    """What leaves for ``obj``: never its autograd graph (which holds the tensors it was computed from, and may hold
    memory written with private data since); a private tensor leaves detached, without its gradient."""
    if storage_of(obj) is None:
        return obj
    if private:
        return obj.detach()
    grad = _grad(obj)
    if obj.grad_fn is None and (grad is None or grad.grad_fn is None):
        return obj
    out = obj.detach().requires_grad_(obj.requires_grad)
    if grad is not None:
        out.grad = grad.detach()
    out.__dict__.update(obj.__dict__)
    return out


def _grad(tensor: Any) -> Any:
    if not isinstance(tensor, torch.Tensor) or not (tensor.is_leaf or tensor.retains_grad):
        return None
    return tensor.grad


def _leaves(roots: list[torch.Tensor]) -> list[torch.Tensor]:
    """The leaf tensors whose ``.grad`` a ``backward()`` from ``roots`` writes (walking ``next_functions``)."""
    leaves = [t for t in roots if t.grad_fn is None and t.requires_grad]
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: dict[int, Any] = {}
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn  # kept alive while walking, so that ids stay unique
        variable = getattr(fn, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def _running_stats(label: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    first = 1 if label in _STATS_FIRST else 3
    found = [arg for arg in args[first : first + 2] if isinstance(arg, torch.Tensor)]
    found.extend(kwargs[k] for k in ("running_mean", "running_var") if isinstance(kwargs.get(k), torch.Tensor))
    return found


def _refusal_message(request: ReleaseRequest, reason: str) -> str:
    what = f"object {request.obj_id} ({request.kind}" + (f", shape {request.shape})" if request.shape else ")")
    if request.kind == "scalar":
        fix = "this worker's policy keeps scalars computed from its data (DataAccessPolicy(release_scalars=False))"
    elif request.private:
        fix = (
            "compute what you need at the worker and release a scalar or a model update the policy allows, or "
            "have the worker's operator allow it: DataAccessPolicy(allow=...)"
        )
    else:
        fix = (
            "this worker's policy keeps model parameters and updates (DataAccessPolicy(release_model=False)): "
            "aggregate them securely instead"
        )
    to = f" to worker {request.destination!r}" if request.destination is not None else ""
    return f"worker {request.worker_id!r} refuses to release {what} through {request.command}(){to}: {reason}; {fix}."
