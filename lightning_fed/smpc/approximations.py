"""Smooth functions on shares by CrypTen's published approximations (Knott et al., "CrypTen: Secure Multi-Party
Computation Meets Machine Learning", NeurIPS 2021, Section 4 and Appendix C.2), built only from the secure
products and comparisons of :mod:`.functional`:

- ``exp(x)`` by the limit ``(1 + x / 2^n)^(2^n)`` with ``n = 8`` (8 squarings); inputs are clamped below at
  ``-2^n`` (one comparison), where the limit would turn negative;
- ``reciprocal(x)`` for ``x > 0`` by Newton-Raphson ``y <- y (2 - x y)`` from ``y0 = 3 exp(1/2 - x) + 0.003``
  (10 iterations; accurate for ``x`` in about ``[0.01, 100]``);
- ``log(x)`` for ``x > 0`` by Householder iterations ``y <- y - sum_k h^k / k`` with ``h = 1 - x exp(-y)``, from
  ``y0 = x / 120 - 20 exp(-2x - 1) + 3`` (3 iterations of order 8);
- ``softmax`` over a dim as ``exp(x - max) / sum exp(x - max)`` (the max by the comparison tournament), and the
  cross-entropy with one-hot or public integer targets, whose backward is ``(softmax - target) / batch``.

These cost tens of sequential products each (cheap on small outputs such as 10 logits a row). Measured with
``base=2, precision_fractional=16`` (tests/smpc/test_approximations.py): ``exp`` within a relative ``x^2 / 2^9``
(0.8% at ``x = 2``, the limit's own error), ``reciprocal`` within 1e-3 relative on ``[0.05, 20]``, ``log`` within
2.5e-2 on ``[0.05, 20]``, softmax within 5e-3; with PySyft's 3 decimal digits they are coarse.

Example:
    >>> import torch, torch.nn.functional as F, lightning_fed as sy
    >>> from lightning_fed.smpc import share
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> x = share(torch.tensor([[1.0, 2.0, 0.5]]), bob, alice, crypto_provider=james, base=2, precision_fractional=16)
    >>> torch.allclose(F.softmax(x, dim=1).get().float_precision(), F.softmax(torch.tensor([[1.0, 2.0, 0.5]]), 1),
    ...                atol=1e-2)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc import autograd
from lightning_fed.smpc import comparisons as cmp
from lightning_fed.smpc import functional as fn
from lightning_fed.smpc.shares import HANDLERS, AdditiveSharingTensor, UnsupportedOperationError

AST = AdditiveSharingTensor
EXP_ITERATIONS = 8


def exp(x: AST) -> AST:
    """``exp(x)`` by the limit approximation (no gradient)."""
    _no_grad(x, "exp")
    with torch.no_grad():
        floor = -float(2**EXP_ITERATIONS)
        x = fn.add(cmp.relu(fn.sub(x, floor)), floor)  # max(x, -2^n)
        y = fn.add(fn.div(x, 2**EXP_ITERATIONS), 1.0)
        for _ in range(EXP_ITERATIONS):
            y = fn.mul(y, y)
        return y


def reciprocal(x: AST, iterations: int = 10) -> AST:
    """``1 / x`` for positive ``x`` by Newton-Raphson (no gradient)."""
    _no_grad(x, "reciprocal")
    with torch.no_grad():
        y = fn.add(fn.mul(exp(fn.rsub(x, 0.5)), 3), 0.003)
        for _ in range(iterations):
            y = fn.mul(y, fn.rsub(fn.mul(x, y), 2.0))
        return y


def log(x: AST, iterations: int = 3, order: int = 8) -> AST:
    """``log(x)`` for positive ``x`` by Householder iterations (no gradient)."""
    _no_grad(x, "log")
    with torch.no_grad():
        y = fn.add(fn.sub(fn.div(x, 120), fn.mul(exp(fn.sub(fn.mul(x, -2), 1.0)), 20)), 3.0)
        for _ in range(iterations):
            h = fn.rsub(fn.mul(x, exp(fn.neg(y))), 1.0)
            power, total = h, h
            for k in range(2, order + 1):
                power = fn.mul(power, h)
                total = fn.add(total, fn.mul(power, 1.0 / k))
            y = fn.sub(y, total)
        return y


def _no_grad(x: AST, name: str) -> None:
    if autograd.needs_grad(x):
        raise UnsupportedOperationError(
            f"{name} of a shared tensor that requires grad has no backward rule here: use F.cross_entropy, whose "
            "backward is exact, or compute it under torch.no_grad()."
        )


def _shifted(x: AST, dim: int) -> tuple[AST, AST]:
    """``x - max(x, dim)`` and ``sum(exp(x - max), dim)`` (keepdim)."""
    with torch.no_grad():
        top = fn.unsqueeze(cmp.max_(x.detach(), dim), dim)
        shifted = fn.sub(x.detach(), fn.expand(top, x.shape))
        return shifted, fn.sum_(exp(shifted), dim, keepdim=True)


def softmax(x: AST, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> AST:
    if dim is None:
        raise FederatedConfigError("softmax on shared tensors needs `dim=`: pass e.g. F.softmax(x, dim=1).")
    _no_grad(x, "softmax")
    with torch.no_grad():
        shifted, total = _shifted(x, dim)
        return fn.mul(exp(shifted), fn.expand(reciprocal(total), x.shape))


def cross_entropy(x: AST, target: Any, weight: Any = None, size_average: Any = None, ignore_index: int = -100,
                  reduce: Any = None, reduction: str = "mean", label_smoothing: float = 0.0) -> AST:  # fmt: skip
    """Cross-entropy of logits ``x`` (N, C) against one-hot targets (shared or public, N x C) or public class
    indices; ``reduction`` ``"mean"`` or ``"sum"``. Forward ``log(sum exp(x - m)) - <target, x - m>``; backward
    ``(softmax(x) - target)`` (divided by N for the mean)."""
    if weight is not None or label_smoothing or reduction not in ("mean", "sum") or x.dim() != 2:
        raise UnsupportedOperationError(
            "cross_entropy on shared tensors takes (N, C) logits, reduction 'mean' or 'sum', no weight and no "
            "label smoothing."
        )
    indices = isinstance(target, Tensor) and not isinstance(target, AST) and not target.is_floating_point()
    if indices and tuple(target.shape) == (x.shape[0],):
        target = F.one_hot(target, x.shape[1]).to(torch.float32)
    if tuple(target.shape) != tuple(x.shape):
        raise FederatedConfigError(
            f"cross_entropy target of shape {tuple(target.shape)} for logits {tuple(x.shape)}: pass one-hot targets "
            "(N, C) or public class indices (N,)."
        )
    n = x.shape[0]
    with torch.no_grad():
        shifted, total = _shifted(x, 1)
        probs = fn.mul(exp(shifted), fn.expand(reciprocal(total), x.shape))
        picked = fn.sum_(fn.mul(shifted, target), 1, keepdim=True)
        loss = fn.sum_(fn.sub(log(total), picked))
        if reduction == "mean":
            loss = fn.div(loss, n)
        delta = fn.sub(probs, target)
        if reduction == "mean":
            delta = fn.div(delta, n)

    def back(g: AST) -> tuple[AST]:
        return (fn.mul(fn.expand(fn.reshape(g, (1, 1)), x.shape), delta),)

    return autograd.record(loss, (x,), back)


HANDLERS[torch.exp] = exp
HANDLERS[Tensor.exp] = exp
HANDLERS[torch.reciprocal] = reciprocal
HANDLERS[Tensor.reciprocal] = reciprocal
HANDLERS[torch.log] = log
HANDLERS[Tensor.log] = log
HANDLERS[F.softmax] = softmax
HANDLERS[torch.softmax] = softmax
HANDLERS[Tensor.softmax] = softmax
HANDLERS[F.cross_entropy] = cross_entropy
