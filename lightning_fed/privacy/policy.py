"""A worker's data-access policy: what may leave it through ``get``, ``to_here`` and ``move``, and an audit of it.

``VirtualWorker(id=..., policy=DataAccessPolicy())`` (or ``worker.set_policy(...)``) gives the worker a guard that
tracks, beside its object store, which objects are **private** (its data and everything computed from it) and which
are **model** objects (parameters and what is computed from them), and checks every request that would take an
object out of the worker. A worker without a policy does none of this: one ``is None`` test per message.

Provenance (how an object gets its labels):

* an object the owner sends (``ObjectMessage``): a tensor is public (it came from ``me``), an ``nn.Parameter`` is a
  model object, anything else (a dataset shard from ``federate``: a ``torch.utils.data.Subset``) is private;
* a result of a command or plan carries the labels of all its inputs: the batches a worker builds from its shard,
  the model's outputs on them and the losses are private; ``param.grad`` and ``param - global`` are model objects;
* an in-place command (``add_``, ``copy_``, ``__setitem__``, a property setter, ``_foreach_*_``, ``out=``) adds its
  inputs' labels to the tensor it writes, so copying private data into a public tensor makes that tensor private;
* objects already held when the policy is set are private (their provenance is unknown): set it before data arrives.

Release rules, checked in this order: a private 0-dim tensor (a scalar loss) leaves if ``release_scalars``; any other
private object is refused; a model object, an ``nn.Parameter`` or a tensor carrying a ``.grad`` (a model update)
leaves if ``release_model``; anything else leaves. A refused request leaves if ``allow(request)`` returns true.
Private tensors leave detached (their autograd graph, which holds the inputs, stays behind). Every release is
recorded in the worker's :class:`AuditLog` (object id, kind, shape, dtype, command, destination, time), and every
refusal in ``audit_log.refused``; a refusal raises :class:`~lightning_fed.exceptions.PermissionDeniedError`.

**What this protects, and what it does not.** Everything runs in one Python process: the policy guards the
pointer/message API, not memory. It stops a caller who holds pointers (``get()``, ``to_here()``, ``move()``, the
messages behind them, and the data-revealing commands the allowlist already refuses) from taking a worker's data out.
It does not stop code in the process from reading ``worker.objects`` or the dataset itself, nor the plans the owner
installs (they run arbitrary Python at the worker and may return plain values), nor side channels: error messages of
failed commands (an out-of-range private index is echoed back), plain values commands return (shapes), and the
1-bit "did it fail" of every command. Labels follow explicit command inputs only: autograd's writes (``.grad`` from a
private loss's ``backward()``) and in-place buffer updates inside a function (BatchNorm's running statistics) are not
seen; a gradient is treated as a model update, and a model update can reveal training data (gradient inversion;
exactly, for a linear layer on one sample): use ``release_model=False`` with secure aggregation or differential
privacy when that matters. ``release_scalars`` releases any 0-dim value computed from private data, so a caller can
read data out one element at a time (``x[i, j].sum()``): it is a convenience for losses, not a guarantee.

Example:
    >>> import torch, lightning_fed as sy
    >>> from torch.utils.data import TensorDataset
    >>> clinic = sy.VirtualWorker(id="clinic", policy=DataAccessPolicy())
    >>> fed = sy.federate(TensorDataset(torch.randn(4, 2)), [clinic])
    >>> data, = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
    >>> data.get()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: worker 'clinic' refuses to release object ...(data, shape (4, 2))...
    >>> data.sum().get().shape, [(r.command, r.kind) for r in clinic.audit_log]
    (torch.Size([]), [('get', 'scalar')])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.privacy.audit import AuditLog, ReleaseRequest, record
from lightning_fed.workers.messages import ObjectRef, TensorDescriptor

_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "div", "mod", "pow", "and", "or", "xor")
) | {"__ilshift__", "__irshift__", "__setitem__", "__set__"}


@dataclass(frozen=True)
class DataAccessPolicy:
    """What a worker lets leave it (see the module docstring for the rules and their limits).

    Args:
        release_model: model parameters and updates (and tensors carrying a ``.grad``) may leave. Default ``True``.
        release_scalars: 0-dim values computed from private data (losses) may leave. Default ``True``.
        allow: ``allow(request: ReleaseRequest) -> bool``, asked about each request the rules refuse (e.g. the
            worker's operator approving one object); ``None`` refuses them all.
        release_data: the worker's data and anything computed from it may leave (rule ``"release_data"``, still
            audited). ``False`` by default; :meth:`open` sets it, an explicit opt-in that logs a warning once.
        release_shapes: commands whose result *shape* depends on private values (``nonzero``, ``unique``, boolean
            masks) may run on private data; their shape counts as released (audited under ``"release_shapes"``).

    Example:
        >>> import torch, lightning_fed as sy
        >>> w = sy.VirtualWorker(id="w", policy=DataAccessPolicy(release_model=False))
        >>> sy.send(torch.ones(2), w).get()  # sent by the owner: public
        tensor([1., 1.])
    """

    release_model: bool = True
    release_scalars: bool = True
    allow: Callable[[ReleaseRequest], bool] | None = None
    release_data: bool = False
    release_shapes: bool = False

    def __post_init__(self) -> None:
        for name in ("release_model", "release_scalars", "release_data", "release_shapes"):
            if not isinstance(getattr(self, name), bool):
                raise FederatedConfigError(
                    f"DataAccessPolicy `{name}={getattr(self, name)!r}` is not valid: pass True or False."
                )
        if self.allow is not None and not callable(self.allow):
            raise FederatedConfigError(
                f"DataAccessPolicy `allow={self.allow!r}` is not valid: pass a function ReleaseRequest -> bool or None."
            )

    @classmethod
    def strict(cls) -> DataAccessPolicy:
        """The default: data stays; model updates and scalar metrics may leave (audited)."""
        return cls()

    @classmethod
    def open(cls) -> DataAccessPolicy:
        """Everything may leave (audited): for a worker whose data is not private, such as a public benchmark."""
        return cls(release_data=True, release_shapes=True)

    @property
    def is_open(self) -> bool:
        return self.release_data

    def decide(self, request: ReleaseRequest) -> tuple[str | None, str]:
        """``(rule, reason)``: the rule that lets ``request`` through, or ``None`` and why it is refused."""
        if request.private and request.kind == "scalar":
            rule, reason = ("release_scalars", "") if self.release_scalars else (None, "release_scalars=False")
        elif request.private:
            rule, reason = ("release_data", "") if self.release_data else (
                None, "it is private to the worker (its data, or computed from it)"
            )  # fmt: skip
        elif request.kind in ("parameter", "update"):
            rule, reason = ("release_model", "") if self.release_model else (None, "release_model=False")
        else:
            rule, reason = "public", ""
        if rule is None and self.allow is not None and self.allow(request):
            rule = "allow"
        return rule, reason

    def guard(self, worker_id: Hashable, objects: Mapping[int, Any]) -> WorkerGuard:
        """The per-worker state (labels, audit log) for a worker holding ``objects``; ``BaseWorker`` calls this."""
        return WorkerGuard(self, worker_id, objects)


_POLICY_NAMES = ("strict", "open")
_warned_open = False


def resolve_policy(policy: DataAccessPolicy | str, argument: str = "policy") -> DataAccessPolicy:
    """A :class:`DataAccessPolicy` from ``policy``: a policy, ``"strict"`` (the default) or ``"open"``; an open policy
    logs a warning, once per process.

    Example:
        >>> resolve_policy("strict") == DataAccessPolicy()
        True
        >>> resolve_policy("none")
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `policy='none'` is not valid: pass 'strict' (the default: ...
    """
    if isinstance(policy, str) and policy in _POLICY_NAMES:
        policy = DataAccessPolicy.strict() if policy == "strict" else DataAccessPolicy.open()
    if not isinstance(policy, DataAccessPolicy):
        raise FederatedConfigError(
            f"`{argument}={policy!r}` is not valid: pass 'strict' (the default: a worker's data never leaves it; "
            "model updates and scalar metrics do, audited), 'open' (everything may leave, audited) or a "
            "lightning_fed.privacy.DataAccessPolicy(...)."
        )
    if policy.is_open:
        warn_open_once()
    return policy


def warn_open_once() -> None:
    """Warn, once per process, that a worker's data may leave it (an open policy)."""
    global _warned_open
    if not _warned_open:
        _warned_open = True
        warnings.warn(
            "a worker has an open data-access policy (release_data=True): its data, and anything computed from it, "
            "can be taken out with .get(). Use policy='strict' (the default) unless the data is not private.",
            UserWarning,
            stacklevel=3,
        )


class WorkerGuard:
    """One worker's provenance labels (sets of private and model object ids) and audit log, under a policy.

    ``BaseWorker`` makes one with :meth:`DataAccessPolicy.guard` and calls it from its message handlers.

    Example:
        >>> import torch
        >>> guard = DataAccessPolicy().guard("w", {})
        >>> guard.on_store(1, torch.utils.data.TensorDataset(torch.zeros(2)))  # a dataset arrives: private
        >>> guard.on_store(2, torch.ones(1))  # a tensor from the owner: public
        >>> guard.private, guard.release(2, torch.ones(1), "get"), guard.audit_log[0].kind
        ({1}, tensor([1.]), 'tensor')
    """

    __slots__ = ("audit_log", "model", "policy", "private", "worker_id")

    def __init__(self, policy: DataAccessPolicy, worker_id: Hashable, objects: Mapping[int, Any]) -> None:
        self.policy = policy
        self.worker_id = worker_id
        self.private: set[int] = set()
        self.model: set[int] = set()
        self.audit_log = AuditLog()
        for obj_id, obj in objects.items():  # unknown provenance: private (parameters stay model objects)
            (self.model if isinstance(obj, nn.Parameter) else self.private).add(obj_id)

    # -- provenance -----------------------------------------------------------------------------------------------
    def on_store(self, obj_id: int, obj: Any) -> None:
        """An object arrived from another party (``send``, ``federate``, ``move``)."""
        self.forget(obj_id)
        if isinstance(obj, nn.Parameter):
            self.model.add(obj_id)
        elif not isinstance(obj, torch.Tensor):
            self.private.add(obj_id)

    def on_result(self, label: str, inputs: Iterable[int], args: tuple, kwargs: dict, response: Any) -> None:
        """A command or plan ran on ``inputs`` (object ids) and answered ``response``: label what it made or wrote."""
        inputs = list(inputs)
        private = any(i in self.private for i in inputs)
        model = any(i in self.model for i in inputs)
        if not (private or model):
            return
        written = list(_written_ids(response))
        if _is_inplace(label):
            first = args[0] if args else None
            written.extend(_ref_ids(first))
            written.extend(_ref_ids(kwargs.get("out")))
        for obj_id in written:
            if private:
                self.private.add(obj_id)
            if model:
                self.model.add(obj_id)

    def forget(self, obj_id: int) -> None:
        self.private.discard(obj_id)
        self.model.discard(obj_id)

    def forget_all(self) -> None:
        self.private.clear()
        self.model.clear()

    # -- release --------------------------------------------------------------------------------------------------
    def request(self, obj_id: int, obj: Any, command: str, destination: Hashable | None = None) -> ReleaseRequest:
        private = obj_id in self.private
        tensor = isinstance(obj, torch.Tensor)
        if private:
            kind = "scalar" if tensor and obj.dim() == 0 else "data"
        elif tensor and (obj_id in self.model or isinstance(obj, nn.Parameter)):
            kind = "parameter" if isinstance(obj, nn.Parameter) else "update"
        elif tensor and obj.is_leaf and obj.grad is not None:
            kind = "update"
        else:
            kind = "tensor" if tensor else "data"
            private = private or not tensor
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

    def release(self, obj_id: int, obj: Any, command: str, destination: Hashable | None = None) -> Any:
        """Check a request, audit it and return what leaves (private tensors detached); raise if it is refused."""
        request = self.request(obj_id, obj, command, destination)
        rule, reason = self.policy.decide(request)
        if rule is None:
            self.audit_log.refused.append(record(request, reason))
            raise PermissionDeniedError(_refusal_message(request, reason))
        self.audit_log.records.append(record(request, rule))
        if command != "to_here":
            self.forget(obj_id)
        if request.private and isinstance(obj, torch.Tensor):
            return obj.detach()
        return obj

    def __repr__(self) -> str:
        return f"WorkerGuard({self.worker_id!r}, {len(self.private)} private, {len(self.model)} model objects)"


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


def _is_inplace(label: str) -> bool:
    short = label.rsplit(".", 1)[-1]
    return (short.endswith("_") and not short.endswith("__")) or short in _INPLACE_DUNDERS


def _written_ids(response: Any) -> Iterator[int]:
    kind = type(response)
    if kind is TensorDescriptor or kind is ObjectRef:
        yield response.obj_id
    elif isinstance(response, (tuple, list)):
        for item in response:
            yield from _written_ids(item)
    elif kind is dict:
        for item in response.values():
            yield from _written_ids(item)


def _ref_ids(arg: Any) -> Iterator[int]:
    if type(arg) is ObjectRef:
        yield arg.obj_id
    elif isinstance(arg, (tuple, list)):  # _foreach_*_ write every tensor of their first list
        for item in arg:
            yield from _ref_ids(item)
