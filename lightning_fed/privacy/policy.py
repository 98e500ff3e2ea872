"""A worker's data-access policy: what may leave it through ``get``, ``to_here`` and ``move``, and an audit of it.

Every worker has one (``VirtualWorker(id=..., policy="strict")`` by default; ``"open"`` or a
``DataAccessPolicy(...)`` otherwise): its guard (:mod:`~lightning_fed.privacy.guard`) labels, beside the object store,
what is **private** (the worker's data and everything computed from it) and what is **model** (parameters, their
gradients and updates), and checks every request that would take an object out of the worker.

Provenance (how an object gets its labels; tensors' labels live on their memory, see :mod:`.labels`):

* an object the owner sends (``ObjectMessage``): a tensor is public (data you send is yours), an ``nn.Parameter`` is
  a model object, anything else (a dataset shard from ``federate``) is private; an object moved from another worker
  keeps the labels it had there;
* a command's result carries the labels of all its inputs, and so does every input it wrote in place (``copy_``,
  ``x[i] = ...``, ``out=``, ``_foreach_*_``, the running statistics of ``batch_norm``); ``.data = x``, ``set_``,
  views, slices and ``.detach()`` share memory, so they share labels;
* ``backward()`` on labelled inputs makes every gradient it writes a model update (and private too, for the gradient
  of a private tensor); ``torch.autograd.grad`` results carry their inputs' labels;
* objects already held when the policy is set are private (their provenance is unknown).

Release rules: a private 0-dim tensor (a scalar loss) leaves if ``release_scalars``; any other private object if
``release_data``; a model object, an ``nn.Parameter`` or a tensor carrying a ``.grad`` (a model update) if
``release_model``; anything else leaves. A command on private inputs whose result *shape* depends on their values
(``nonzero``, ``unique``, a boolean mask, a private size or dim) runs only if ``release_shapes`` (its shapes are
recorded as released), and one that would return a plain Python value computed from them only if ``release_data``.
A refused request leaves if ``allow(request)`` returns true. Nothing leaves with its autograd graph. Every release
is recorded in the worker's :class:`AuditLog` with its rule, and every refusal in ``audit_log.refused``; a refusal
raises :class:`~lightning_fed.exceptions.PermissionDeniedError`.

**What this protects, and what it does not** (docs/privacy.md lists the residual channels): everything runs in one
Python process, so the policy guards the pointer/message API, not memory: code in the process can read
``worker.objects``, and the plans the owner installs run arbitrary Python at the worker. A model update can reveal
training data (gradient inversion), and ``release_scalars`` lets a caller read data one element at a time
(``x[i, j].sum()``): use ``release_model=False`` and ``release_scalars=False`` when the pointer API is exposed to
someone you do not trust.

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
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.audit import ReleaseRequest
from lightning_fed.privacy.guard import WorkerGuard


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
        if request.kind == "shape":
            rule, reason = ("release_shapes", "") if self.release_shapes else (
                ("release_data", "") if self.release_data else (None, "release_shapes=False")
            )  # fmt: skip
        elif request.kind == "value":
            rule, reason = ("release_data", "") if self.release_data else (None, "release_data=False")
        elif request.private and request.kind == "scalar":
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
