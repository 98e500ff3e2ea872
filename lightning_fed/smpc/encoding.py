"""Fixed-point encoding: a real ``x`` is the ring element ``round(x * base**precision_fractional)``.

PySyft 0.2's default is kept (``base=10, precision_fractional=3``: three decimal digits); ``base=2,
precision_fractional=16`` is CrypTen's choice and what training wants (finer steps, the same cost). A product of two
encoded values carries the scale twice and is truncated back by the protocols (:mod:`.protocols.arithmetic`). The
ring holds ``|x| * scale < 2^62`` at encoding time; a product needs ``|x * y| * scale^2 < 2^63``, the headroom the
documentation's table states (docs/smpc.md).

Example:
    >>> import torch
    >>> fp = FixedPoint()
    >>> fp.scale, fp.encode(torch.tensor([0.1234, -2.0]))
    (1000, tensor([  123, -2000]))
    >>> x = FixedPrecisionTensor.from_float(torch.tensor([3.14159]), precision_fractional=2)
    >>> x
    FixedPrecisionTensor(tensor([314]), base=10, precision_fractional=2)
    >>> x.float_precision()
    tensor([3.1400])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError

_LIMIT = 2.0**62  # an encoded value's bound: one bit of headroom under the signed ring's 2^63


class UnsupportedOperationError(FederatedConfigError, NotImplementedError):
    """A torch operation has no implementation for fixed-precision or shared tensors."""


SUPPORTED = (
    "FixedPrecisionTensor supports +, - and negation, * (by a public int, float or tensor, or by another "
    "FixedPrecisionTensor), sum(), float_precision() and share(); for anything else share it first with "
    ".share(bob, alice, crypto_provider=james), or decode it with .float_precision()"
)


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point encoding: ``scale = base ** precision_fractional``; ``precision_fractional=0`` is plain ints.

    Args:
        base: the base of the fractional digits (10 as PySyft, or 2).
        precision_fractional: how many fractional digits in ``base``.
    """

    base: int = 10
    precision_fractional: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.base, int) or isinstance(self.base, bool) or self.base < 2:
            raise FederatedConfigError(f"`base` must be an int >= 2, got base={self.base!r}: use 10 (PySyft) or 2.")
        p = self.precision_fractional
        if not isinstance(p, int) or isinstance(p, bool) or p < 0 or self.base**p >= 2**31:
            raise FederatedConfigError(
                f"`precision_fractional={p!r}` does not fit base {self.base}: the scale base**precision_fractional "
                "must be below 2**31 so that a product of two encoded values fits the 64-bit ring; use e.g. "
                "precision_fractional=3 (base 10) or 16 (base 2)."
            )

    @property
    def scale(self) -> int:
        return self.base**self.precision_fractional

    def encode(self, x: Tensor) -> Tensor:
        """``round(x * scale)`` as int64; raises on values the ring cannot hold."""
        if not torch.is_floating_point(x):
            if x.dtype == torch.bool or not x.dtype.is_complex:
                x = x.to(torch.float64)
            else:
                raise FederatedConfigError(f"fix_precision() takes a real tensor, got dtype {x.dtype}.")
        scaled = x.detach().to(torch.float64) * self.scale
        if scaled.numel():
            if not bool(torch.isfinite(scaled).all()):
                raise FederatedConfigError("fix_precision() got a NaN or an infinite value: it cannot be encoded.")
            peak = float(scaled.abs().max())
            if peak >= _LIMIT:
                top = peak / self.scale
                raise OverflowError(
                    f"precision overflow: |x| = {top:.4g} with base={self.base}, precision_fractional="
                    f"{self.precision_fractional} needs {peak:.3g} >= 2**62 in the 64-bit ring; lower "
                    "precision_fractional or rescale the tensor."
                )
        return torch.round(scaled).to(torch.int64)

    def decode(self, v: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The real values of encoded ``v`` (ring elements read as signed), as ``dtype``."""
        return (v.to(torch.float64) / self.scale).to(dtype)


INTEGER = FixedPoint(10, 0)
"""The encoding of integer tensors shared without ``fix_precision()`` (scale 1)."""


# sharing sits above the encoding: it registers itself here (register_sharing) when lightning_fed.smpc is imported
_share_encoded: Callable[..., Any] | None = None


def register_sharing(share_encoded: Callable[..., Any]) -> None:
    """``share_encoded(values, encoding, dtype, workers, **kwargs)``: what :meth:`FixedPrecisionTensor.share` does."""
    global _share_encoded
    _share_encoded = share_encoded


class FixedPrecisionTensor:
    """A local tensor in fixed point: int64 ``child`` and its :class:`FixedPoint` encoding (PySyft's name).

    ``.share(*workers, crypto_provider=...)`` secret-shares it; ``.float_precision()`` decodes it.
    """

    __slots__ = ("child", "dtype", "encoding")

    def __init__(self, child: Tensor, encoding: FixedPoint, dtype: torch.dtype = torch.float32) -> None:
        if child.dtype != torch.int64:
            raise FederatedConfigError(f"a FixedPrecisionTensor holds int64 values, got {child.dtype}.")
        self.child = child
        self.encoding = encoding
        self.dtype = dtype

    @classmethod
    def from_float(cls, x: Tensor, base: int = 10, precision_fractional: int = 3) -> FixedPrecisionTensor:
        encoding = FixedPoint(base, precision_fractional)
        dtype = x.dtype if torch.is_floating_point(x) else torch.float32
        return cls(encoding.encode(x), encoding, dtype)

    @property
    def shape(self) -> torch.Size:
        return self.child.shape

    def size(self, dim: int | None = None) -> Any:
        return self.child.size() if dim is None else self.child.size(dim)

    def dim(self) -> int:
        return self.child.dim()

    def float_precision(self) -> Tensor:
        """The decoded float tensor."""
        return self.encoding.decode(self.child, self.dtype)

    float_prec = float_precision

    def share(self, *workers: Any, **kwargs: Any) -> Any:
        """Secret-share among ``workers``; see :func:`lightning_fed.smpc.share`."""
        if _share_encoded is None:
            raise FederatedConfigError("sharing needs lightning_fed.smpc imported (it registers the protocol).")
        return _share_encoded(self.child, self.encoding, self.dtype, workers, **kwargs)

    def _check(self, other: FixedPrecisionTensor) -> None:
        if other.encoding != self.encoding:
            raise FederatedConfigError(
                f"fixed-point tensors with different encodings: {self.encoding} and {other.encoding}; "
                "encode both with the same base and precision_fractional."
            )

    def _new(self, child: Tensor) -> FixedPrecisionTensor:
        return FixedPrecisionTensor(child, self.encoding, self.dtype)

    def _operand(self, other: Any, symbol: str) -> Tensor:
        """``other`` as a public tensor (int or float), else raise naming it."""
        plain = isinstance(other, (int, float)) or (isinstance(other, Tensor) and type(other) is Tensor)
        if not plain or isinstance(other, bool) or (isinstance(other, Tensor) and other.is_complex()):
            raise UnsupportedOperationError(f"FixedPrecisionTensor {symbol} a {type(other).__name__}: {SUPPORTED}.")
        return torch.as_tensor(other).detach()

    def _encoded(self, other: Any, symbol: str) -> Tensor:
        if isinstance(other, FixedPrecisionTensor):
            self._check(other)
            return other.child
        return self.encoding.encode(self._operand(other, symbol))

    def __add__(self, other: Any) -> FixedPrecisionTensor:
        return self._new(self.child + self._encoded(other, "+"))

    __radd__ = __add__

    def __sub__(self, other: Any) -> FixedPrecisionTensor:
        return self._new(self.child - self._encoded(other, "-"))

    def __rsub__(self, other: Any) -> FixedPrecisionTensor:
        return self._new(self._encoded(other, "-") - self.child)

    def __neg__(self) -> FixedPrecisionTensor:
        return self._new(-self.child)

    def __mul__(self, other: Any) -> FixedPrecisionTensor:
        """The product; by another fixed-point value or a float it is truncated back to the scale (toward zero, as
        PySyft), so it is within one unit of ``1 / scale``. Raises ``OverflowError`` if it leaves the ring."""
        if isinstance(other, FixedPrecisionTensor):
            self._check(other)
            return self._new(_truncated(_product(self.child, other.child, self.encoding), self.encoding.scale))
        t = self._operand(other, "*")
        if not t.is_floating_point():  # an integer: exact, nothing to truncate
            return self._new(_product(self.child, t.to(torch.int64), self.encoding))
        encoded = self.encoding.encode(t)
        return self._new(_truncated(_product(self.child, encoded, self.encoding), self.encoding.scale))

    __rmul__ = __mul__

    def sum(self, dim: Any = None, keepdim: bool = False) -> FixedPrecisionTensor:
        """The sum (over ``dim`` if given), exact."""
        child = self.child.sum() if dim is None else self.child.sum(dim, keepdim=keepdim)
        _fits(self.child.to(torch.float64).abs().sum(), self.encoding, "sum()")
        return self._new(child)

    def __getattr__(self, name: str) -> Any:
        if name == "get":
            raise AttributeError(
                "FixedPrecisionTensor has no 'get': it is local, there is nothing to get; decode it with "
                ".float_precision(), or .share(...) it."
            )
        if name == "send":
            raise AttributeError(
                "FixedPrecisionTensor has no 'send': share it instead with .share(bob, alice, crypto_provider=james), "
                "or send the float tensor and call ptr.fix_precision() on the pointer."
            )
        raise AttributeError(f"FixedPrecisionTensor has no {name!r}: {SUPPORTED}.")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        method = _TORCH_METHODS.get(func)
        if method is not None:
            first, *rest = args
            if not isinstance(first, FixedPrecisionTensor):  # `tensor * fpt`: the reflected operation of fpt
                first, rest = rest[0], [first, *rest[1:]]
                method = _REFLECTED.get(method, method)
            return getattr(first, method)(*rest, **(kwargs or {}))
        name = getattr(func, "__name__", repr(func))
        raise UnsupportedOperationError(f"{name} on a FixedPrecisionTensor is not supported: {SUPPORTED}.")

    def __repr__(self) -> str:
        enc = self.encoding
        return f"FixedPrecisionTensor({self.child!r}, base={enc.base}, precision_fractional={enc.precision_fractional})"


def _fits(magnitude: Tensor, encoding: FixedPoint, what: str) -> None:
    if magnitude.numel() and float(magnitude.max()) >= _LIMIT:
        raise OverflowError(
            f"precision overflow in {what}: the result leaves the 64-bit ring with base={encoding.base}, "
            f"precision_fractional={encoding.precision_fractional}; lower precision_fractional or rescale."
        )


def _product(a: Tensor, b: Tensor, encoding: FixedPoint) -> Tensor:
    _fits((a.to(torch.float64) * b.to(torch.float64)).abs(), encoding, "a product")
    return a * b


def _truncated(v: Tensor, scale: int) -> Tensor:
    return torch.div(v, scale, rounding_mode="trunc")


def _refuse(symbol: str) -> Callable[..., Any]:
    def op(self: FixedPrecisionTensor, *args: Any) -> Any:
        raise UnsupportedOperationError(f"`{symbol}` on a FixedPrecisionTensor is not supported: {SUPPORTED}.")

    return op


for _name, _symbol in {"__truediv__": "/", "__rtruediv__": "/", "__floordiv__": "//", "__rfloordiv__": "//",
                       "__matmul__": "@", "__rmatmul__": "@", "__pow__": "**", "__mod__": "%", "__lt__": "<",
                       "__le__": "<=", "__gt__": ">", "__ge__": ">="}.items():  # fmt: skip
    setattr(FixedPrecisionTensor, _name, _refuse(_symbol))

_TORCH_METHODS: dict[Any, str] = {
    torch.sum: "sum", Tensor.sum: "sum", torch.mul: "__mul__", Tensor.mul: "__mul__", Tensor.__mul__: "__mul__",
    Tensor.__rmul__: "__mul__", torch.add: "__add__", Tensor.__add__: "__add__", torch.sub: "__sub__",
    torch.neg: "__neg__", Tensor.sub: "__sub__", Tensor.__sub__: "__sub__", Tensor.add: "__add__",
    Tensor.__radd__: "__add__",
}  # fmt: skip
_REFLECTED = {"__sub__": "__rsub__"}  # + and * commute
