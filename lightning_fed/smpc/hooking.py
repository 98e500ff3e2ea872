"""The methods ``TorchHook`` adds for secret sharing (PySyft 0.2's names), kept here and listed in :data:`PATCHES`.

``Tensor.fix_precision/fix_prec`` and ``Tensor.share``; ``Module.fix_precision/fix_prec``, ``Module.share``,
``Module.float_precision/float_prec`` and ``Module.get`` (a shared model is reconstructed, any other module is
fetched from its worker as before); ``Optimizer.fix_precision``. On a pointer, ``fix_precision().share(...)`` runs at
the worker that holds the value: it encodes and splits it there and sends the shares straight to the share holders
(PySyft's Part 10); ``.get()`` then brings back the shared tensor (pointers to shares), never the value.

Example:
    >>> import torch, lightning_fed as sy
    >>> with sy.TorchHook(torch) as hook:
    ...     bob, alice, james = (sy.VirtualWorker(hook, id=n) for n in ("bob", "alice", "james"))
    ...     x = torch.tensor([0.1, 0.2, 0.3]).fix_precision().share(bob, alice, crypto_provider=james)
    ...     print((x + x).get().float_precision())
    tensor([0.2000, 0.4000, 0.6000])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_fed.exceptions import FederatedConfigError, PointerError
from lightning_fed.pointers.api import get as pointer_get
from lightning_fed.pointers.pointer_tensor import PointerTensor
from lightning_fed.smpc import nn as smpc_nn
from lightning_fed.smpc.encoding import FixedPoint, FixedPrecisionTensor, UnsupportedOperationError
from lightning_fed.smpc.parties import Parties, Shares, install
from lightning_fed.smpc.shares import AdditiveSharingTensor, check_protocol, share_encoded


class _Remote:
    """What :class:`RemoteFixedPrecision` and :class:`RemoteShared` share: clear errors for what they lack."""

    _offers = ""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{type(self).__name__} has no {name!r}: {self._offers}.")

    def _no_arithmetic(self, *args: Any) -> Any:
        raise UnsupportedOperationError(f"{type(self).__name__} has no arithmetic: {self._offers}.")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __matmul__ = _no_arithmetic


class RemoteFixedPrecision(_Remote):
    """A pointer's value in fixed point (``ptr.fix_precision()``, PySyft's pointer to a FixedPrecisionTensor).

    ``.share(...)`` encodes and shares it at its worker; ``.get()`` brings the encoded value here (a
    :class:`FixedPrecisionTensor`; the worker keeps its tensor, and its policy decides as for ``ptr.to_here()``);
    ``.float_precision()`` is a pointer to the value rounded to the encoding, at the worker.
    """

    _offers = (
        "it offers .share(bob, alice, crypto_provider=james) (shared at its worker), .get() (the "
        "FixedPrecisionTensor here), .float_precision() (a pointer to the rounded value) and .location"
    )

    def __init__(self, pointer: PointerTensor, encoding: FixedPoint) -> None:
        self.pointer = pointer
        self.encoding = encoding
        self._fetched = False

    @property
    def location(self) -> Any:
        return self.pointer.location

    def get(self) -> FixedPrecisionTensor:
        if self._fetched:
            raise PointerError(
                "this fix_precision() value was already brought here with .get(): keep the FixedPrecisionTensor it "
                "returned, or call ptr.fix_precision().get() again."
            )
        value = self.pointer.to_here()  # the worker's policy decides, as for ptr.to_here()
        if isinstance(value, PointerTensor):
            raise PointerError(
                "fix_precision().get() on a pointer chain: call .get() on the chain first, then fix_precision()."
            )
        enc = self.encoding
        fpt = FixedPrecisionTensor.from_float(value, enc.base, enc.precision_fractional)
        self._fetched = True
        return fpt

    def float_precision(self) -> PointerTensor:
        scale = self.encoding.scale
        dtype = self.pointer.dtype if self.pointer.dtype.is_floating_point else torch.float32
        return ((self.pointer.to(torch.float64) * scale).round() / scale).to(dtype)

    float_prec = float_precision

    def share(self, *workers: Any, crypto_provider: Any = None, protocol: str | None = None,
              requires_grad: bool = False) -> RemoteShared:  # fmt: skip
        check_protocol(protocol)
        parties = Parties(workers, crypto_provider)
        holder = self.pointer.location
        install(holder)
        enc = self.encoding
        one = Parties.__new__(Parties)  # the holder alone runs the split
        one.workers, one.provider = (holder,), None
        parts = one.map("encode_split", Shares([self.pointer]), enc.base, enc.precision_fractional, parties.n)
        moved = Shares(ptr[0].move(worker) for ptr, worker in zip(parts, parties.workers))
        dtype = self.pointer.dtype if self.pointer.dtype.is_floating_point else torch.float32
        ast = AdditiveSharingTensor._make(moved, parties, enc, dtype, protocol, requires_grad)
        return RemoteShared(ast, holder)

    def __repr__(self) -> str:
        p, enc = self.pointer, self.encoding
        return (
            f"RemoteFixedPrecision(-> {p.location.id}:{p.id_at_location}, base={enc.base}, "
            f"precision_fractional={enc.precision_fractional})"
        )


class RemoteShared(_Remote):
    """A shared tensor made by the worker ``location``; ``.get()`` hands it (its pointers to shares) over."""

    _offers = "call .get() for the AdditiveSharingTensor (pointers to the shares), then compute with it"

    def __init__(self, shared: AdditiveSharingTensor, location: Any) -> None:
        self._shared = shared
        self.location = location

    def get(self) -> AdditiveSharingTensor:
        return self._shared

    def __repr__(self) -> str:
        ids = [w.id for w in self._shared.workers]
        provider = self._shared.crypto_provider
        dealer = f", crypto provider {provider.id!r}" if provider is not None else ""
        return f"RemoteShared(made at {self.location.id!r}, shared among {ids}{dealer}; .get() gives it)"


def tensor_fix_precision(self: torch.Tensor, base: int = 10, precision_fractional: int = 3) -> Any:
    if isinstance(self, PointerTensor):
        return RemoteFixedPrecision(self, FixedPoint(base, precision_fractional))
    return FixedPrecisionTensor.from_float(self, base, precision_fractional)


def tensor_share(self: torch.Tensor, *workers: Any, **kwargs: Any) -> AdditiveSharingTensor:
    if isinstance(self, PointerTensor):
        raise FederatedConfigError(
            "share() on a pointer: call ptr.fix_precision().share(...) so the worker holding it shares it."
        )
    if self.dtype.is_floating_point:
        raise FederatedConfigError(
            f"share() on a {self.dtype} tensor: shares are integers; call .fix_precision() first, "
            "e.g. x.fix_precision().share(bob, alice, crypto_provider=james)."
        )
    from lightning_fed.smpc.encoding import INTEGER

    return share_encoded(self.detach().to(torch.int64), INTEGER, self.dtype, workers, **kwargs)


def module_fix_precision(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    return smpc_nn.fix_precision_module(self, *args, **kwargs)


def module_share(self: nn.Module, *workers: Any, **kwargs: Any) -> nn.Module:
    return smpc_nn.share_module(self, *workers, **kwargs)


def module_float_precision(self: nn.Module) -> nn.Module:
    return smpc_nn.float_precision_module(self)


def module_get(self: nn.Module) -> nn.Module:
    if smpc_nn.is_shared(self):
        return smpc_nn.get_module(self)
    return pointer_get(self)


def optimizer_fix_precision(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Kept for PySyft's code: the learning rate is encoded where it multiplies a shared gradient."""
    return self


PATCHES: tuple[tuple[type, str, Any], ...] = (
    (torch.Tensor, "fix_precision", tensor_fix_precision),
    (torch.Tensor, "fix_prec", tensor_fix_precision),
    (torch.Tensor, "share", tensor_share),
    (nn.Module, "fix_precision", module_fix_precision),
    (nn.Module, "fix_prec", module_fix_precision),
    (nn.Module, "share", module_share),
    (nn.Module, "float_precision", module_float_precision),
    (nn.Module, "float_prec", module_float_precision),
    (nn.Module, "get", module_get),
    (torch.optim.Optimizer, "fix_precision", optimizer_fix_precision),
)
