"""The ring ``Z_(2^64)`` as ``torch.int64``: random elements, additive shares, and exact bilinear maps.

torch's int64 ``+ - *`` wrap around modulo ``2**64`` (two's complement), which is the ring's arithmetic. What torch
lacks is fast *integer* ``matmul``/``conv2d`` (int64 ``matmul`` runs without BLAS, ``conv2d`` not at all), so
:func:`bilinear` computes them exactly with float64 BLAS: each operand is cut into three balanced 22-bit limbs
(``a = a0 + a1 2^22 + a2 2^44``, ``|ai| <= 2^21``), the six limb products with ``i + j <= 2`` are summed in float64
(exact while every partial sum stays below ``2^53``, i.e. at most :data:`MAX_TERMS` = 1024 terms per output, larger
reductions are cut into chunks) and recombined modulo ``2**64``. The same trick (limbs in floating point) is how
CrypTen runs its int64 ring on GPUs (Knott et al., NeurIPS 2021, Section 5).

Example:
    >>> import torch
    >>> a = torch.tensor([[2**62 + 3, -5]]); b = torch.tensor([[7], [2**61]])
    >>> bool((matmul(a, b) == torch.matmul(a, b)).all())
    True
    >>> shares = split(torch.tensor([25, -4]), 3)
    >>> len(shares), reconstruct(shares)
    (3, tensor([25, -4]))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.secure_aggregation.prg import SEED_BYTES, prg_ring

LIMB_BITS = 22
MAX_TERMS = 1024  # 1024 * (2^21)^2 = 2^52 < 2^53: every float64 partial sum of limb products is an exact integer
WIDE_MAX_TERMS = 1 << 22  # with 16-bit limbs: 2^22 * (2^15)^2 = 2^52


def random_ring(shape: Sequence[int] | torch.Size, seed: bytes | None = None) -> Tensor:
    """Uniform elements of ``Z_(2^64)`` (int64) from the ChaCha20 keystream of ``seed`` (default: a fresh
    ``os.urandom`` key, so every call is independent and unpredictable)."""
    shape = torch.Size(shape)
    return prg_ring(seed if seed is not None else os.urandom(SEED_BYTES), shape.numel(), bits=64).view(shape)


def split(value: Tensor, n: int) -> list[Tensor]:
    """``n`` additive shares of the int64 ``value``: ``n - 1`` uniform, the last one the difference."""
    shares = [random_ring(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for share in shares:
        last.sub_(share)
    shares.append(last)
    return shares


def reconstruct(shares: Sequence[Tensor]) -> Tensor:
    """The sum of additive shares, modulo ``2**64``."""
    total = shares[0].clone()
    for share in shares[1:]:
        total.add_(share)
    return total


def limbs(a: Tensor, bits: int = LIMB_BITS, count: int = 3) -> tuple[Tensor, ...]:
    """``count`` balanced ``bits``-bit limbs of int64 ``a`` as float64: ``a == sum(l_i * 2^(bits * i))`` (mod
    ``2**64``), ``|l_i| <= 2^(bits - 1)`` (the top one holds the rest: ``<= 2^19 + 1`` for 22-bit limbs)."""
    mask = (1 << bits) - 1
    half = 1 << (bits - 1)
    out = []
    rest = a
    for _ in range(count - 1):
        out.append((((rest + half) & mask) - half).double())
        rest = (rest >> bits) + ((rest >> (bits - 1)) & 1)  # round(rest / 2^bits), no overflow
    out.append(rest.double())
    return tuple(out)


def bilinear(op: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor, wide: bool = False) -> Tensor:
    """``op(a, b)`` in ``Z_(2^64)`` for a bilinear ``op`` (matmul, conv2d...) summing at most :data:`MAX_TERMS`
    products per output element (three 22-bit limbs, six products), or :data:`WIDE_MAX_TERMS` with ``wide`` (four
    16-bit limbs, ten products)."""
    bits, count = (16, 4) if wide else (LIMB_BITS, 3)
    la, lb = limbs(a, bits, count), limbs(b, bits, count)
    out = None
    for shift in range(count):
        part = None
        for i in range(shift + 1):
            term = op(la[i], lb[shift - i]).to(torch.int64)  # exact: |term| <= 2^52
            part = term if part is None else part.add_(term)
        part = part << (bits * shift) if shift else part
        out = part if out is None else out.add_(part)
    return out


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in ``Z_(2^64)`` (any shapes ``torch.matmul`` takes with at least 1-d operands)."""
    k = a.shape[-1]
    if k <= MAX_TERMS:
        return bilinear(torch.matmul, a, b)
    a2 = a if a.dim() > 1 else a.unsqueeze(0)
    b2 = b if b.dim() > 1 else b.unsqueeze(-1)
    out = None
    for start in range(0, k, MAX_TERMS):
        part = bilinear(torch.matmul, a2[..., start : start + MAX_TERMS], b2[..., start : start + MAX_TERMS, :])
        out = part if out is None else out.add_(part)
    if a.dim() == 1:
        out = out.squeeze(-2)
    if b.dim() == 1:
        out = out.squeeze(-1)
    return out


def conv2d(x: Tensor, w: Tensor, stride: int | tuple = 1, padding: int | tuple = 0, dilation: int | tuple = 1,
           groups: int = 1) -> Tensor:  # fmt: skip
    """``F.conv2d(x, w)`` in ``Z_(2^64)`` (no bias), input channels cut into chunks of at most :data:`MAX_TERMS`
    terms."""
    per_channel = w.shape[2] * w.shape[3]
    cin = w.shape[1]
    step = max(1, MAX_TERMS // per_channel)
    if groups != 1 or cin <= step:
        if groups != 1 and cin * per_channel > MAX_TERMS:
            raise ValueError(f"grouped ring conv2d with {cin * per_channel} terms per output is not supported")

        def op(a: Tensor, b: Tensor) -> Tensor:
            return F.conv2d(a, b, None, stride, padding, dilation, groups)

        return bilinear(op, x, w)
    out = None
    for start in range(0, cin, step):
        part = conv2d(x[:, start : start + step], w[:, start : start + step], stride, padding, dilation)
        out = part if out is None else out.add_(part)
    return out


def conv2d_input_grad(g: Tensor, w: Tensor, input_shape: Sequence[int], stride: int | tuple = 1,
                      padding: int | tuple = 0, dilation: int | tuple = 1) -> Tensor:  # fmt: skip
    """The gradient of ``conv2d(x, w)`` with respect to ``x`` given the output gradient ``g``, in the ring."""
    cout = w.shape[0]
    step = max(1, MAX_TERMS // (w.shape[2] * w.shape[3]))
    out = None
    for start in range(0, cout, step):

        def op(a: Tensor, b: Tensor) -> Tensor:
            return torch.nn.grad.conv2d_input(input_shape, b, a, stride, padding, dilation)

        part = bilinear(op, g[:, start : start + step], w[start : start + step])
        out = part if out is None else out.add_(part)
    return out


def conv2d_weight_grad(x: Tensor, g: Tensor, weight_shape: Sequence[int], stride: int | tuple = 1,
                       padding: int | tuple = 0, dilation: int | tuple = 1) -> Tensor:  # fmt: skip
    """The gradient of ``conv2d(x, w)`` with respect to ``w``, in the ring: a sum over images and output positions,
    cut into chunks of images (16-bit limbs beyond :data:`MAX_TERMS` positions per image)."""
    positions = g.shape[2] * g.shape[3]
    wide = positions > MAX_TERMS
    if positions > WIDE_MAX_TERMS:
        raise ValueError(f"ring conv2d weight gradient over {positions} output positions per image is not supported")
    step = max(1, (WIDE_MAX_TERMS if wide else MAX_TERMS) // positions)
    out = None
    for start in range(0, x.shape[0], step):

        def op(a: Tensor, b: Tensor) -> Tensor:
            return torch.nn.grad.conv2d_weight(a, weight_shape, b, stride, padding, dilation)

        part = bilinear(op, x[start : start + step], g[start : start + step], wide=wide)
        out = part if out is None else out.add_(part)
    return out


def conv2d_input_grad_of(g: Tensor, w: Tensor, input_shape: Sequence[int] = (), **kw: Any) -> Tensor:
    return conv2d_input_grad(g, w, input_shape, **kw)


def conv2d_weight_grad_of(x: Tensor, g: Tensor, weight_shape: Sequence[int] = (), **kw: Any) -> Tensor:
    return conv2d_weight_grad(x, g, weight_shape, **kw)


BILINEAR: dict[str, Callable[..., Tensor]] = {
    "mul": torch.mul,
    "matmul": matmul,
    "conv2d": conv2d,
    "conv2d_input_grad": conv2d_input_grad_of,
    "conv2d_weight_grad": conv2d_weight_grad_of,
}
"""The bilinear maps the protocols multiply by Beaver triples, by name (``op(x, y)`` in the ring)."""


def trunc_share(share: Tensor, divisor: int, party: int) -> Tensor:
    """One party's step of SecureML's local truncation for two parties (Mohassel & Zhang, S&P 2017, Thm. 1):
    party 0 keeps ``floor(x0 / d)``, party 1 ``-floor(-x1 / d)``. The reconstruction is ``x / d`` up to 1 unit,
    except with probability about ``|x| / 2^63`` (then it is off by ``2^64 / d``)."""
    if party == 0:
        return torch.div(share, divisor, rounding_mode="floor")
    return -torch.div(-share, divisor, rounding_mode="floor")
