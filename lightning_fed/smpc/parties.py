"""The parties of a secret-shared computation: share holders (workers) and an optional crypto provider (dealer).

A share is an int64 tensor in a worker's own store; the local side holds :class:`~lightning_fed.PointerTensor` s to
them, one per worker (:class:`Shares`). Each step of a protocol runs *at every worker on its own share* through one
installed plan, ``"lightning_fed.smpc"``, which looks the step up in :data:`LOCAL_OPS` (a fixed table: a message never
names code to run). :meth:`Parties.open` reveals a value to all parties: protocols open only values masked by the
dealer's uniform randomness (Beaver's ``x - a``), never a secret.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob, alice = sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice")
    >>> parties = Parties((bob, alice))
    >>> x = parties.share(torch.tensor([5, -7]))
    >>> y = parties.map("add", x, x)
    >>> parties.open(y)
    tensor([ 10, -14])
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers.pointer_tensor import PointerTensor, pointers_from
from lightning_fed.smpc import ring
from lightning_fed.smpc.encoding import FixedPoint
from lightning_fed.workers.base import BaseWorker, me
from lightning_fed.workers.messages import ObjectMessage, ObjectRef, PlanMessage
from lightning_fed.workers.store import new_object_id

PLAN = "lightning_fed.smpc"
PARTY = object()
"""Placeholder in :meth:`Parties.map` arguments: replaced by the party's index (0 for the first worker)."""


class Shares(tuple):
    """One pointer per party (in the parties' order): the shares of one secret value."""

    __slots__ = ()

    @property
    def shape(self) -> torch.Size:
        return self[0].shape


def _first(party: int, x: Tensor, c: Tensor | int) -> Tensor:  # a public term is added by one party only
    return x + c if party == 0 else x.clone()


def _beaver(kind: str, c: Tensor, e: Tensor, b: Tensor, x: Tensor, f: Tensor, **kw: Any) -> Tensor:
    op = ring.BILINEAR[kind]  # a fixed table: KeyError for any other name
    return c + op(e, b, **kw) + op(x, f, **kw)


def _public_bilinear(kind: str, x: Tensor, y: Tensor, **kw: Any) -> Tensor:
    return ring.BILINEAR[kind](x, y, **kw)


def _and_combine(party: int, c: Tensor, e: Tensor, b: Tensor, a: Tensor, f: Tensor) -> Tensor:
    z = c ^ (e & b) ^ (f & a)
    return z ^ (e & f) if party == 0 else z


def _mask_pair(x: Tensor, a: Tensor, y: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return x - a, y - b


def _xor_mask_pair(x: Tensor, a: Tensor, y: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return x ^ a, y ^ b


def _own(party: int, owner: int, x: Tensor) -> Tensor:  # a party's arithmetic share as a binary sharing of itself
    return x.clone() if party == owner else torch.zeros_like(x)


def _take(x: Tensor, index: Tensor, dim: int) -> Tensor:
    return x.index_select(dim, index)


def _scatter_add(g: Tensor, index: Tensor, dim: int, size: int) -> Tensor:
    shape = list(g.shape)
    shape[dim] = size
    return torch.zeros(shape, dtype=g.dtype).index_add_(dim, index, g)


def _encode_split(x: Tensor, base: int, precision_fractional: int, n: int) -> tuple[Tensor, ...]:
    """At the worker holding a plain value: encode it and split it into ``n`` shares (PySyft's remote share)."""
    return tuple(ring.split(FixedPoint(base, precision_fractional).encode(x), n))


def _msb(x: Tensor) -> Tensor:
    return (x >> 63) & 1


LOCAL_OPS: dict[str, Callable[..., Any]] = {
    "add": torch.add,
    "sub": torch.sub,
    "neg": torch.neg,
    "mul": torch.mul,
    "xor": torch.bitwise_xor,
    "and": torch.bitwise_and,
    "lshift": torch.bitwise_left_shift,
    "msb": _msb,
    "encode_split": _encode_split,
    "first": _first,
    "own": _own,
    "clone": torch.clone,
    "reshape": torch.reshape,
    "permute": torch.permute,
    "transpose": torch.transpose,
    "expand": torch.Tensor.expand,
    "contiguous": torch.Tensor.contiguous,
    "squeeze": torch.squeeze,
    "unsqueeze": torch.unsqueeze,
    "getitem": operator.getitem,
    "cat": torch.cat,
    "stack": torch.stack,
    "sum": torch.sum,
    "take": _take,
    "scatter_add": _scatter_add,
    "pad": F.pad,
    "bilinear": _public_bilinear,
    "trunc": ring.trunc_share,
    "mask_pair": _mask_pair,
    "xor_mask_pair": _xor_mask_pair,
    "beaver": _beaver,
    "and_combine": _and_combine,
}
"""The steps a worker runs on its shares, by name. Each returns new tensors (never one of its inputs)."""


def _plan(op: str, *args: Any, **kwargs: Any) -> Any:
    return LOCAL_OPS[op](*args, **kwargs)


_READY: weakref.WeakSet[BaseWorker] = weakref.WeakSet()


def install(worker: BaseWorker) -> None:
    """Install the smpc plan at ``worker`` (once)."""
    if worker not in _READY:
        worker.install_plan(PLAN, _plan)
        _READY.add(worker)


def _refs(obj: Any, worker: BaseWorker) -> Any:
    kind = type(obj)
    if kind is PointerTensor:
        if obj.location is not worker:
            raise FederatedConfigError(f"a share of worker {obj.location.id!r} was sent to worker {worker.id!r}.")
        return ObjectRef(obj.id_at_location)
    if kind is tuple or kind is list:
        return kind(_refs(item, worker) for item in obj)
    return obj


def check_workers(workers: Sequence[Any], provider: Any) -> tuple[BaseWorker, ...]:
    """Validate share holders and a crypto provider; return the workers as a tuple."""
    workers = tuple(workers)
    if len(workers) == 1 and isinstance(workers[0], (tuple, list)):
        workers = tuple(workers[0])
    if len(workers) < 2:
        raise FederatedConfigError(
            f"share() needs at least two workers to hold shares, got {len(workers)} "
            f"({[getattr(w, 'id', w) for w in workers]}): one share is the value itself; pass e.g. "
            "share(bob, alice, crypto_provider=james)."
        )
    for worker in workers:
        if not isinstance(worker, BaseWorker):
            raise FederatedConfigError(
                f"share() takes workers, got {worker!r} ({type(worker).__name__}): create them with "
                "lightning_fed.VirtualWorker(hook, id='bob')."
            )
        if worker is me:
            raise FederatedConfigError("the local worker `me` cannot hold a share: pass other workers to share().")
    if len({id(w) for w in workers}) != len(workers):
        raise FederatedConfigError(
            f"share() got the same worker twice ({[w.id for w in workers]}): each share needs its own worker."
        )
    if provider is not None:
        if not isinstance(provider, BaseWorker):
            raise FederatedConfigError(
                f"`crypto_provider` must be a worker, got {provider!r}: pass e.g. crypto_provider=james."
            )
        if any(provider is w for w in workers):
            raise FederatedConfigError(
                f"the crypto provider {provider.id!r} also holds a share: it would see the shared values; "
                "choose a crypto provider that is not one of the share holders."
            )
    return workers


class Parties:
    """Share holders ``workers`` and the dealer ``provider`` (``None``: only linear operations are possible)."""

    __slots__ = ("__weakref__", "provider", "workers")

    def __init__(self, workers: Sequence[BaseWorker], provider: BaseWorker | None = None) -> None:
        self.workers = check_workers(workers, provider)
        self.provider = provider
        for worker in self.workers:
            install(worker)

    @property
    def n(self) -> int:
        return len(self.workers)

    def same(self, other: Parties) -> bool:
        return len(self.workers) == len(other.workers) and all(a is b for a, b in zip(self.workers, other.workers))

    # -- moving tensors --------------------------------------------------------------------------------------------
    def place(self, values: Sequence[Tensor], sender: BaseWorker = me) -> Shares:
        """Send ``values[i]`` (a share) from ``sender`` to worker ``i``; return the pointers."""
        ptrs = []
        for worker, value in zip(self.workers, values):
            obj_id = new_object_id()
            sender._send(ObjectMessage(obj_id, value), worker)
            ptrs.append(PointerTensor._make(worker, obj_id, value.shape, value.dtype, value.device, me, value.layout))
        return Shares(ptrs)

    def share(self, value: Tensor) -> Shares:
        """Secret-share the int64 ``value``: fresh uniform shares, one to each worker."""
        return self.place(ring.split(value, self.n))

    def open(self, x: Shares) -> Tensor:
        """Reveal an arithmetically shared value (the shares leave the workers)."""
        return ring.reconstruct([ptr.get() for ptr in x])

    def open_xor(self, x: Shares) -> Tensor:
        """Reveal an XOR-shared value."""
        values = [ptr.get() for ptr in x]
        out = values[0].clone()
        for value in values[1:]:
            out.bitwise_xor_(value)
        return out

    # -- local steps -----------------------------------------------------------------------------------------------
    def map(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run local step ``op`` at every worker: :class:`Shares` arguments give each worker its own share, ``PARTY``
        its index, anything else (public values) goes to all. Returns :class:`Shares` (a tuple of them for a step
        with several outputs)."""
        results = []
        for i, worker in enumerate(self.workers):
            own = tuple(_pick(arg, i, worker) for arg in args)
            kw = {key: _pick(value, i, worker) for key, value in kwargs.items()} if kwargs else {}
            response = me._send(PlanMessage(PLAN, (op, *own), kw), worker)
            results.append(pointers_from(response, worker))
        if isinstance(results[0], tuple):
            return tuple(Shares(parts) for parts in zip(*results))
        return Shares(results)

    # -- the dealer ------------------------------------------------------------------------------------------------
    def require_provider(self, what: str) -> BaseWorker:
        if self.provider is None:
            raise FederatedConfigError(
                f"{what} on shared tensors needs a crypto provider for its correlated randomness, and these were "
                f"shared without one: share with `.share({', '.join(str(w.id) for w in self.workers)}, "
                "crypto_provider=<another worker>)`."
            )
        return self.provider

    def deal(self, what: str, values: Sequence[Tensor], xor: Sequence[bool] | None = None) -> list[Shares]:
        """The dealer shares each of ``values`` (arithmetically, or by XOR where ``xor[k]``) among the workers."""
        provider = self.require_provider(what)
        out = []
        for k, value in enumerate(values):
            parts = _split_xor(value, self.n) if xor is not None and xor[k] else ring.split(value, self.n)
            out.append(self.place(parts, sender=provider))
        return out


def _split_xor(value: Tensor, n: int) -> list[Tensor]:
    shares = [ring.random_ring(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for share in shares:
        last.bitwise_xor_(share)
    shares.append(last)
    return shares


def _pick(arg: Any, i: int, worker: BaseWorker) -> Any:
    if type(arg) is Shares:
        return _refs(arg[i], worker)
    if arg is PARTY:
        return i
    if type(arg) is list and arg and type(arg[0]) is Shares:
        return [_refs(item[i], worker) for item in arg]
    return arg
