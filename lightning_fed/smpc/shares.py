"""``AdditiveSharingTensor``: a value secret-shared among workers, usable as a tensor (PySyft 0.2's name).

The local object holds only pointers to the shares (one int64 tensor in each worker's store), the encoding and the
parties; every torch function applied to it reaches :meth:`AdditiveSharingTensor.__torch_function__`, which runs the
secure protocol for it (:mod:`lightning_fed.smpc.functional`) or raises naming what is supported.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> x = share(torch.tensor([25]), bob, alice)
    >>> y = share(torch.tensor([5]), bob, alice)
    >>> (x + y).get(), (x - y).get()
    (tensor([30]), tensor([20]))
    >>> z = share(torch.tensor([0.5, -1.25]), bob, alice, crypto_provider=james)
    >>> z
    (Wrapper)>[AdditiveSharingTensor, base=10, precision_fractional=3]
        -> [PointerTensor | me:... -> bob:...]
        -> [PointerTensor | me:... -> alice:...]
        *crypto provider: james*
    >>> torch.allclose((z * z).get().float_precision(), torch.tensor([0.25, 1.5625]), atol=2e-3)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc import autograd
from lightning_fed.smpc.encoding import (
    INTEGER,
    FixedPoint,
    FixedPrecisionTensor,
    UnsupportedOperationError,
    register_sharing,
)
from lightning_fed.smpc.parties import Parties, Shares
from lightning_fed.workers.base import BaseWorker

PROTOCOLS = (None, "snn", "fss", "a2b")
"""Accepted ``protocol=`` names (PySyft's ``"snn"`` and ``"fss"`` are accepted for compatibility): every comparison
runs CrypTen's arithmetic-to-binary conversion (:mod:`lightning_fed.smpc.protocols.binary`)."""

HANDLERS: dict[Any, Callable[..., Any]] = {}
"""torch function -> secure implementation; filled by :mod:`lightning_fed.smpc.functional`."""
SECURE: dict[str, Callable[..., Any]] = {}
"""The secure ``ones_like``, ``public_as_shared`` and ``add`` that ``backward`` needs; filled by the same module."""


class AdditiveSharingTensor(Tensor):
    """A secret-shared tensor. Create it with :func:`share` (or ``x.fix_precision().share(...)`` under the hook).

    Attributes:
        shares: one pointer per worker to that worker's share (int64 in ``Z_(2^64)``).
        parties: the share holders and the crypto provider.
        encoding: the fixed-point encoding of the values (:data:`~lightning_fed.smpc.encoding.INTEGER` for ints).
    """

    shares: Shares
    parties: Parties
    encoding: FixedPoint
    protocol: str | None
    _smpc_requires_grad: bool
    _smpc_grad: AdditiveSharingTensor | None
    _smpc_grad_fn: autograd.Node | None

    def __new__(cls, *args: Any, **kwargs: Any) -> AdditiveSharingTensor:
        raise FederatedConfigError(
            "AdditiveSharingTensor is not built directly: use `tensor.fix_precision().share(bob, alice, "
            "crypto_provider=james)` or lightning_fed.smpc.share()."
        )

    @classmethod
    def _make(cls, shares: Shares, parties: Parties, encoding: FixedPoint, dtype: torch.dtype,
              protocol: str | None = None, requires_grad: bool = False) -> AdditiveSharingTensor:  # fmt: skip
        t = Tensor._make_wrapper_subclass(cls, shares.shape, dtype=dtype, device=torch.device("cpu"))
        t.shares = shares
        t.parties = parties
        t.encoding = encoding
        t.protocol = protocol
        t._smpc_requires_grad = requires_grad
        if requires_grad:
            _watch_optimizers()
        t._smpc_grad = None
        t._smpc_grad_fn = None
        return t

    def _like(self, shares: Shares, encoding: FixedPoint | None = None, dtype: torch.dtype | None = None) -> Any:
        """A new shared tensor with ``shares`` and this one's parties (no autograd history)."""
        return AdditiveSharingTensor._make(
            shares, self.parties, encoding or self.encoding, dtype or self.dtype, self.protocol
        )

    # -- PySyft's API ----------------------------------------------------------------------------------------------
    @property
    def workers(self) -> tuple[BaseWorker, ...]:
        return self.parties.workers

    @property
    def crypto_provider(self) -> BaseWorker | None:
        return self.parties.provider

    @property
    def child(self) -> dict[Any, Any]:
        """The shares by worker id (PySyft's ``child``)."""
        return {w.id: ptr for w, ptr in zip(self.parties.workers, self.shares)}

    def get(self) -> Tensor | FixedPrecisionTensor:
        """Reconstruct the value: the workers hand over their shares (and forget them).

        Returns a :class:`~lightning_fed.smpc.encoding.FixedPrecisionTensor` for fixed-point values (call
        ``.float_precision()``), an int tensor for integers shared without encoding.
        """
        value = self.parties.open(self.shares)
        if self.encoding == INTEGER and not self.dtype.is_floating_point:
            return value.to(self.dtype)
        return FixedPrecisionTensor(value, self.encoding, self.dtype)

    def get_(self) -> Any:
        raise FederatedConfigError(
            "get_() (PySyft's in-place get) is not offered on a shared tensor: its value comes back as another "
            "object (a FixedPrecisionTensor, or an int tensor), so write `x = x.get()`."
        )

    def reconstruct(self) -> Tensor | FixedPrecisionTensor:
        """Like :meth:`get` but the shared tensor stays usable (the workers keep their shares)."""
        return self.copy().get()

    def copy(self) -> AdditiveSharingTensor:
        """A new shared tensor with copies of the shares (no autograd history)."""
        return self._like(self.parties.map("clone", self.shares))

    def refresh(self) -> AdditiveSharingTensor:
        """The same value under fresh shares: each share plus a fresh random sharing of zero."""
        zero = self.parties.share(torch.zeros(self.shape, dtype=torch.int64))
        out = self._like(self.parties.map("add", self.shares, zero))
        return autograd.record(out, (self,), lambda g: (g,))

    def float_precision(self) -> Any:
        raise FederatedConfigError(
            "float_precision() on a shared tensor: reconstruct it first with `.get().float_precision()`."
        )

    float_prec = float_precision

    def share(self, *workers: Any, **kwargs: Any) -> AdditiveSharingTensor:
        raise FederatedConfigError(
            f"this tensor is already shared among {[w.id for w in self.workers]}: call .get() first to share it again."
        )

    def __repr__(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        enc = self.encoding
        head = "AdditiveSharingTensor" + (
            "" if enc == INTEGER else f", base={enc.base}, precision_fractional={enc.precision_fractional}"
        )
        lines = [f"(Wrapper)>[{head}]"]
        lines += [
            f"    -> [PointerTensor | me:{p.id} -> {w.id}:{p.id_at_location}]"
            for w, p in zip(self.workers, self.shares)
        ]
        if self.crypto_provider is not None:
            lines.append(f"    *crypto provider: {self.crypto_provider.id}*")
        return "\n".join(lines)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise FederatedConfigError(
            "a shared tensor cannot be pickled: its shares live in the workers' stores. Call .get() first."
        )

    # -- autograd --------------------------------------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:  # type: ignore[override]
        return self._smpc_requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self._smpc_requires_grad = bool(value)
        if value:
            _watch_optimizers()

    def requires_grad_(self, requires_grad: bool = True) -> AdditiveSharingTensor:  # type: ignore[override]
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self) -> AdditiveSharingTensor | None:  # type: ignore[override]
        return self._smpc_grad

    @grad.setter
    def grad(self, value: AdditiveSharingTensor | None) -> None:
        if value is not None and not isinstance(value, AdditiveSharingTensor):
            raise FederatedConfigError(
                f"the gradient of a shared tensor must be shared too, got {type(value).__name__}: share it first."
            )
        self._smpc_grad = value

    @property
    def grad_fn(self) -> autograd.Node | None:  # type: ignore[override]
        return self._smpc_grad_fn

    @property
    def is_leaf(self) -> bool:  # type: ignore[override]
        return self._smpc_grad_fn is None

    def backward(self, gradient: Any = None, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Compute the gradients of this (scalar, unless ``gradient`` is given) value with respect to the leaves."""
        fn = SECURE  # the secure functions sit above this class: they fill SECURE when imported
        if not self._smpc_requires_grad:
            raise FederatedConfigError(
                "backward() on a shared tensor that does not require grad: share the model or data with "
                "requires_grad=True."
            )
        if gradient is None:
            if self.numel() != 1:
                raise FederatedConfigError(
                    f"backward() without a gradient needs a scalar, got shape {tuple(self.shape)}: "
                    "reduce it with .sum() first or pass gradient=."
                )
            gradient = fn["ones_like"](self)
        elif not isinstance(gradient, AdditiveSharingTensor):
            gradient = fn["public_as_shared"](self, gradient)
        autograd.backward(self, gradient, fn["add"])

    def detach(self) -> AdditiveSharingTensor:  # type: ignore[override]
        return self._like(self.shares)

    # -- torch dispatch --------------------------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        handler = HANDLERS.get(func)
        if handler is not None:
            return handler(*args, **(kwargs or {}))
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        raise UnsupportedOperationError(
            f"{name} is not supported on shared tensors (no secure protocol for it here). Supported: "
            f"{supported_names()}. Rewrite the step with these, or reconstruct with .get() if the value may be "
            "revealed."
        )

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise UnsupportedOperationError(f"{func} reached a shared tensor below __torch_function__ (unsupported).")


_optimizer_hook: Any = None


def _watch_optimizers() -> None:
    """Install (once, when a shared tensor first requires grad) the check that only SGD steps shared tensors."""
    global _optimizer_hook
    if _optimizer_hook is None:
        _optimizer_hook = register_optimizer_step_pre_hook(_only_sgd)


def _only_sgd(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if any(isinstance(p, AdditiveSharingTensor) for p in group["params"]):
            raise UnsupportedOperationError(
                f"torch.optim.{type(optimizer).__name__} cannot step shared parameters: its update needs operations "
                "with no secure protocol here (square roots, division by shared values). Use torch.optim.SGD, with "
                "momentum if needed: `torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)`."
            )


_METADATA_NAMES = (
    "shape", "size", "dim", "ndim", "dtype", "device", "numel", "nelement", "__len__", "is_sparse", "is_cuda",
    "layout", "is_floating_point", "__hash__", "is_complex", "is_quantized", "is_meta", "is_nested", "is_mkldnn",
    "is_mps", "is_xla", "__dir__", "_is_view", "element_size",
)  # fmt: skip


def _metadata() -> set[Any]:
    out = set()
    for name in _METADATA_NAMES:
        attr = Tensor.__dict__.get(name) or getattr(Tensor, name, None)
        if attr is None:
            continue
        out.add(getattr(attr, "__get__", attr) if not callable(attr) or hasattr(attr, "__set__") else attr)
    return out


_METADATA = _metadata()


def supported_names() -> str:
    names = sorted({getattr(f, "__name__", str(f)).strip("_") for f in HANDLERS})
    return ", ".join(n for n in names if n)


def check_protocol(protocol: Any) -> str | None:
    if protocol not in PROTOCOLS:
        raise FederatedConfigError(
            f"`protocol={protocol!r}` is not known: use one of {PROTOCOLS} (all run the A2B comparison protocol)."
        )
    return protocol


def share_encoded(
    child: Tensor,
    encoding: FixedPoint,
    dtype: torch.dtype,
    workers: Any,
    *,
    crypto_provider: BaseWorker | None = None,
    protocol: str | None = None,
    requires_grad: bool = False,
    field: int | None = None,
    **kwargs: Any,
) -> AdditiveSharingTensor:
    """Secret-share the encoded int64 ``child`` among ``workers`` (see :func:`share`)."""
    if kwargs:
        unknown = ", ".join(sorted(kwargs))
        raise FederatedConfigError(
            f"share() got unexpected arguments: {unknown}; it takes workers, crypto_provider=, protocol=, "
            "requires_grad=."
        )
    if field is not None and field != 2**64:
        raise FederatedConfigError(f"`field={field!r}`: shares live in Z_(2^64) only; leave field out.")
    check_protocol(protocol)
    parties = Parties(workers, crypto_provider)
    if requires_grad and not dtype.is_floating_point:
        raise FederatedConfigError(
            "requires_grad=True needs real values: call .fix_precision() on a float tensor before .share()."
        )
    return AdditiveSharingTensor._make(parties.share(child), parties, encoding, dtype, protocol, requires_grad)


def share(x: Tensor | FixedPrecisionTensor, *workers: BaseWorker, crypto_provider: BaseWorker | None = None,
          protocol: str | None = None, requires_grad: bool = False, base: int = 10,
          precision_fractional: int = 3, **kwargs: Any) -> AdditiveSharingTensor:  # fmt: skip
    """Secret-share ``x`` among ``workers`` (at least two); a float tensor is first encoded in fixed point.

    Args:
        x: a tensor (float: encoded with ``base``/``precision_fractional``; int: shared as is) or a
            :class:`~lightning_fed.smpc.encoding.FixedPrecisionTensor`.
        workers: the share holders, each keeps one share in its store.
        crypto_provider: the dealer of correlated randomness; needed for products and comparisons.
        protocol: accepted for PySyft compatibility (see :data:`PROTOCOLS`).
        requires_grad: record operations for ``backward()``.
    """
    if isinstance(x, AdditiveSharingTensor):
        return x.share(*workers)
    if isinstance(x, FixedPrecisionTensor):
        return share_encoded(x.child, x.encoding, x.dtype, workers, crypto_provider=crypto_provider,
                             protocol=protocol, requires_grad=requires_grad, **kwargs)  # fmt: skip
    if not isinstance(x, Tensor):
        raise FederatedConfigError(f"share() takes a tensor, got {type(x).__name__}.")
    if x.dtype.is_floating_point:
        fpt = FixedPrecisionTensor.from_float(x, base, precision_fractional)
        return share_encoded(fpt.child, fpt.encoding, fpt.dtype, workers, crypto_provider=crypto_provider,
                             protocol=protocol, requires_grad=requires_grad, **kwargs)  # fmt: skip
    if x.dtype.is_complex:
        raise FederatedConfigError("share() takes real tensors: complex values cannot be shared.")
    return share_encoded(x.detach().to(torch.int64), INTEGER, x.dtype if x.dtype != torch.bool else torch.int64,
                         workers, crypto_provider=crypto_provider, protocol=protocol,
                         requires_grad=requires_grad, **kwargs)  # fmt: skip


register_sharing(share_encoded)  # FixedPrecisionTensor.share
