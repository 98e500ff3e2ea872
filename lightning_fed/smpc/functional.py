"""Secure implementations of torch functions on :class:`~lightning_fed.smpc.shares.AdditiveSharingTensor`, each
with its backward rule (:mod:`.autograd`), registered in :data:`~lightning_fed.smpc.shares.HANDLERS`.

Linear operations (``+ -``, products by public values, reshapes, sums) run locally on each share. Products of two
shared values use Beaver triples, then truncation (:mod:`.protocols.arithmetic`); comparisons, ReLU, max, argmax
and max-pooling use the sign bit from CrypTen's A2B conversion (:mod:`.protocols.binary`).

Example:
    >>> import torch, torch.nn.functional as F, lightning_fed as sy
    >>> from lightning_fed.smpc import share
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> x = share(torch.tensor([[-1.5, 2.0], [0.25, -3.0]]), bob, alice, crypto_provider=james)
    >>> F.relu(x).get().float_precision()
    tensor([[0.0000, 2.0000],
            [0.2500, 0.0000]])
    >>> x.argmax(dim=1).get().float_precision()
    tensor([1., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc import autograd
from lightning_fed.smpc.encoding import INTEGER
from lightning_fed.smpc.parties import Shares
from lightning_fed.smpc.protocols.arithmetic import add_public, beaver, public_to_shares, truncate
from lightning_fed.smpc.shares import HANDLERS, SECURE, AdditiveSharingTensor, UnsupportedOperationError

AST = AdditiveSharingTensor


# -- helpers --------------------------------------------------------------------------------------------------------
def _pair(x: AST, y: AST) -> AST:
    """Check that ``x`` and ``y`` can be combined; return the one whose parties the result keeps (a crypto provider,
    if either has one)."""
    if not x.parties.same(y.parties):
        raise FederatedConfigError(
            f"mixing tensors shared among different workers: {[w.id for w in x.workers]} and "
            f"{[w.id for w in y.workers]}; share both among the same workers (in the same order)."
        )
    if x.encoding != y.encoding:
        raise FederatedConfigError(
            f"mixing shared tensors with different encodings: {x.encoding} and {y.encoding}; call fix_precision() "
            "with the same base and precision_fractional on both."
        )
    px, py = x.parties.provider, y.parties.provider
    if px is not None and py is not None and px is not py:
        raise FederatedConfigError(
            f"mixing tensors with different crypto providers ({px.id!r} and {py.id!r}): share both with the same "
            "crypto_provider."
        )
    return y if px is None and py is not None else x


def _public(like: AST, value: Any) -> Tensor:
    """A public operand as a ring element in ``like``'s encoding."""
    if isinstance(value, Tensor) and type(value) is not Tensor and not isinstance(value, torch.nn.Parameter):
        raise FederatedConfigError(
            f"a shared tensor cannot be combined with a {type(value).__name__}: bring it here (.get()) or share it "
            "among the same workers."
        )
    t = torch.as_tensor(value).detach()
    if like.encoding == INTEGER:
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise FederatedConfigError(
                "a real public operand with a tensor shared as integers: share a fixed-point tensor "
                "(`x.fix_precision().share(...)`) to compute with fractions."
            )
        return t.to(torch.int64)
    return like.encoding.encode(t)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, Tensor) and type(value) is Tensor and not value.is_floating_point()


def _new(like: AST, shares: Shares, inputs: Sequence[Any] = (), backward: Any = None) -> AST:
    out = like._like(shares)
    return autograd.record(out, inputs, backward) if backward is not None else out


def _unbroadcast(g: AST, shape: torch.Size) -> AST:
    if g.shape == shape:
        return g
    extra = g.dim() - len(shape)
    dims = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1)
    out = sum_(g, dims, keepdim=True) if dims else g
    return reshape(out, shape)


def public_as_shared(like: AST, value: Any) -> AST:
    """A public value as a trivially shared tensor with ``like``'s parties and encoding."""
    return like._like(public_to_shares(like.parties, _public(like, value).expand(like.shape).contiguous()))


def ones_like(x: AST) -> AST:
    return public_as_shared(x, torch.ones(x.shape))


# -- linear operations ----------------------------------------------------------------------------------------------
def add(x: Any, y: Any, alpha: Any = 1) -> AST:
    if alpha != 1:
        y = mul(y, alpha) if isinstance(y, AST) else y * alpha
    if not isinstance(x, AST):
        return add(y, x)
    if isinstance(y, AST):
        like = _pair(x, y)
        out = x.parties.map("add", x.shares, y.shares)
        return _new(like, out, (x, y), lambda g: (_unbroadcast(g, x.shape), _unbroadcast(g, y.shape)))
    shares = add_public(x.parties, x.shares, _public(x, y))
    return _new(x, shares, (x,), lambda g: (_unbroadcast(g, x.shape),))


def neg(x: AST) -> AST:
    return _new(x, x.parties.map("neg", x.shares), (x,), lambda g: (neg(g),))


def sub(x: Any, y: Any, alpha: Any = 1) -> AST:
    if isinstance(y, AST):
        return add(x, neg(y), alpha)
    return add(x, -torch.as_tensor(y), alpha)


def rsub(x: AST, y: Any) -> AST:
    return add(neg(x), y)


def mul(x: Any, y: Any) -> AST:
    if not isinstance(x, AST):
        return mul(y, x)
    p = x.parties
    if isinstance(y, AST):
        like = _pair(x, y)
        p = like.parties
        out = truncate(p, beaver(p, "mul", x.shares, y.shares), x.encoding.scale)
        return _new(like, out, (x, y), lambda g: (_unbroadcast(mul(g, y), x.shape), _unbroadcast(mul(g, x), y.shape)))
    if _is_int(y):  # exact, no truncation
        out = p.map("mul", x.shares, torch.as_tensor(y, dtype=torch.int64))
    else:
        out = truncate(p, p.map("mul", x.shares, _public(x, y)), x.encoding.scale)
    return _new(x, out, (x,), lambda g: (_unbroadcast(mul(g, y), x.shape),))


def div(x: AST, y: Any, rounding_mode: str | None = None) -> AST:
    """``x / y`` for a public ``y``: fixed-point values only, within the encoding's precision (truncation)."""
    if isinstance(y, AST) or not isinstance(x, AST):
        raise UnsupportedOperationError(
            "division by a shared tensor is not supported: divide by a public number (e.g. the batch size)."
        )
    if rounding_mode is not None:
        raise UnsupportedOperationError(
            f"torch.div(shared, {y!r}, rounding_mode={rounding_mode!r}) is not supported: shared division has no "
            "exact floor or trunc, only the fixed-point precision. Divide without rounding_mode, reconstruct with "
            ".get().float_precision(), then round locally (torch.floor / torch.trunc)."
        )
    if x.encoding == INTEGER and not x.dtype.is_floating_point:
        raise UnsupportedOperationError(
            f"integer shares / {y!r}: torch's true division gives fractions (7 / 2 = 3.5), which integer shares "
            "cannot hold (dividing the shares would be off by one at random). Share a fixed-point tensor instead: "
            "`x.float().fix_precision().share(...)`, then divide."
        )
    if _is_int(y) and torch.as_tensor(y).dim() == 0:
        d = int(y)
        if d <= 0:
            raise FederatedConfigError(f"division of a shared tensor by {d}: divide by a positive integer.")
        return _new(x, truncate(x.parties, x.shares, d), (x,), lambda g: (div(g, d),))
    return mul(x, 1.0 / torch.as_tensor(y, dtype=torch.float64))


def pow_(x: AST, exponent: Any) -> AST:
    if not (isinstance(exponent, int) and exponent >= 1):
        raise UnsupportedOperationError(f"shared ** {exponent!r}: only positive integer powers are supported.")
    out = x
    for _ in range(exponent - 1):
        out = mul(out, x)
    return out


def matmul(x: Any, y: Any) -> AST:
    like = x if isinstance(x, AST) else y
    p = like.parties
    if isinstance(x, AST) and isinstance(y, AST):
        like = _pair(x, y)
        p = like.parties
        out = truncate(p, beaver(p, "matmul", x.shares, y.shares), like.encoding.scale)
        return _new(like, out, (x, y), lambda g: (matmul(g, transpose(y, -1, -2)), _matmul_weight_grad(x, g, y)))
    if isinstance(x, AST):
        pub = _public(x, y)
        out = truncate(p, p.map("bilinear", "matmul", x.shares, pub), like.encoding.scale)
        return _new(like, out, (x,), lambda g: (matmul(g, pub_t(like, pub)),))
    pub = _public(y, x)
    out = truncate(p, p.map("bilinear", "matmul", pub, y.shares), like.encoding.scale)
    return _new(like, out, (y,), lambda g: (matmul(pub_t(like, pub), g),))


def pub_t(like: AST, pub: Tensor) -> Tensor:
    """A public encoded matrix transposed, decoded back (exactly) for the next :func:`matmul` to encode."""
    t = pub.transpose(-1, -2)
    return like.encoding.decode(t, torch.float64) if like.encoding != INTEGER else t


def _matmul_weight_grad(x: AST, g: AST, y: AST) -> AST:
    if y.dim() != 2:
        raise UnsupportedOperationError("backward of matmul with a shared operand of more than 2 dims.")
    k = x.shape[-1]
    x2 = reshape(x, (-1, k)) if x.dim() != 2 else x
    g2 = reshape(g, (-1, g.shape[-1])) if g.dim() != 2 else g
    if x.dim() == 1:
        x2, g2 = reshape(x, (1, k)), reshape(g, (1, -1))
    return matmul(transpose(x2, 0, 1), g2)


def linear(x: Any, weight: Any, bias: Any = None) -> AST:
    out = matmul(x, transpose(weight, 0, 1) if isinstance(weight, AST) else weight.t())
    return add(out, bias) if bias is not None else out


def sum_(x: AST, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> AST:
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        out = x.parties.map("sum", x.shares)
        return _new(x, out, (x,), lambda g: (expand(reshape(g, [1] * x.dim()), x.shape),))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = x.parties.map("sum", x.shares, dims, keepdim)

    def back(g: AST) -> tuple[AST]:
        if not keepdim:
            shape = list(x.shape)
            for d in dims:
                shape[d % x.dim()] = 1
            g = reshape(g, shape)
        return (expand(g, x.shape),)

    return _new(x, out, (x,), back)


def mean(x: AST, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> AST:
    total = sum_(x, dim, keepdim)
    count = x.numel() // max(1, total.numel()) if dim is not None else x.numel()
    return div(total, int(count))


def mse_loss(x: Any, target: Any, size_average: Any = None, reduce: Any = None, reduction: str = "mean",
             weight: Any = None) -> AST:  # fmt: skip
    if weight is not None:
        raise UnsupportedOperationError("mse_loss(weight=...) on shared tensors: multiply the error by the weight.")
    err = pow_(sub(x, target), 2)
    if reduction == "mean":
        return mean(err)
    if reduction == "sum":
        return sum_(err)
    return err


# -- shape operations -----------------------------------------------------------------------------------------------
def _shape_args(shape: tuple) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else tuple(shape)


def reshape(x: AST, *shape: Any) -> AST:
    shape = _shape_args(shape)
    out = x.parties.map("reshape", x.shares, shape)
    return _new(x, out, (x,), lambda g: (reshape(g, x.shape),))


def view_as(x: AST, other: Tensor) -> AST:
    return reshape(x, other.shape)


def flatten(x: AST, start_dim: int = 0, end_dim: int = -1) -> AST:
    shape = list(x.shape)
    s, e = start_dim % max(1, x.dim()), end_dim % max(1, x.dim())
    new = [*shape[:s], -1, *shape[e + 1 :]] if x.dim() else [1]
    return reshape(x, new)


def transpose(x: AST, dim0: int, dim1: int) -> AST:
    out = x.parties.map("transpose", x.shares, dim0, dim1)
    return _new(x, out, (x,), lambda g: (transpose(g, dim0, dim1),))


def t(x: AST) -> AST:
    return transpose(x, 0, 1) if x.dim() == 2 else x


def permute(x: AST, *dims: Any) -> AST:
    dims = _shape_args(dims)
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d % len(dims)] = i
    out = x.parties.map("permute", x.shares, dims)
    return _new(x, out, (x,), lambda g: (permute(g, inverse),))


def expand(x: AST, *shape: Any) -> AST:
    shape = _shape_args(shape)
    out = x.parties.map("contiguous", x.parties.map("expand", x.shares, shape))
    return _new(x, out, (x,), lambda g: (_unbroadcast(g, x.shape),))


def unsqueeze(x: AST, dim: int) -> AST:
    out = x.parties.map("unsqueeze", x.shares, dim)
    return _new(x, out, (x,), lambda g: (reshape(g, x.shape),))


def squeeze(x: AST, dim: Any = None) -> AST:
    out = x.parties.map("squeeze", x.shares) if dim is None else x.parties.map("squeeze", x.shares, dim)
    return _new(x, out, (x,), lambda g: (reshape(g, x.shape),))


def getitem(x: AST, index: Any) -> AST:
    if isinstance(index, AST) or (isinstance(index, tuple) and any(isinstance(i, AST) for i in index)):
        raise UnsupportedOperationError("indexing with a shared index is not supported: use public indices.")
    if autograd.needs_grad(x):
        raise UnsupportedOperationError("indexing a shared tensor that requires grad has no backward rule here.")
    return x._like(x.parties.map("getitem", x.shares, index))


def clone(x: AST, memory_format: Any = None) -> AST:
    return _new(x, x.parties.map("clone", x.shares), (x,), lambda g: (g,))


def contiguous(x: AST, memory_format: Any = None) -> AST:
    return x


def cat(tensors: Sequence[AST], dim: int = 0) -> AST:
    first = tensors[0]
    for other in tensors[1:]:
        _pair(first, other)
    if autograd.needs_grad(*tensors):
        raise UnsupportedOperationError("torch.cat of shared tensors that require grad has no backward rule here.")
    return first._like(first.parties.map("cat", [x.shares for x in tensors], dim))


def stack(tensors: Sequence[AST], dim: int = 0) -> AST:
    return cat([unsqueeze(x, dim) for x in tensors], dim)


# -- in-place updates (optimizers) ----------------------------------------------------------------------------------
def _assign(x: AST, new: AST) -> AST:
    if new.shape != x.shape:
        raise FederatedConfigError(
            f"in-place update of a shared tensor of shape {tuple(x.shape)} with {tuple(new.shape)}."
        )
    x.shares = new.shares
    return x


def add_(x: AST, other: Any, alpha: Any = 1) -> AST:
    with torch.no_grad():
        return _assign(
            x, add(x, other if alpha == 1 else mul(other, alpha) if isinstance(other, AST) else other * alpha)
        )


def sub_(x: AST, other: Any, alpha: Any = 1) -> AST:
    return add_(x, other, -alpha)


def mul_(x: AST, other: Any) -> AST:
    with torch.no_grad():
        return _assign(x, mul(x, other))


def zero_(x: AST) -> AST:
    x.shares = x.parties.map("mul", x.shares, 0)
    return x


# -- registration ---------------------------------------------------------------------------------------------------
def _register(fn: Any, *funcs: Any) -> None:
    for func in funcs:
        HANDLERS[func] = fn


SECURE.update(ones_like=ones_like, public_as_shared=public_as_shared, add=add)
T = Tensor
_register(add, torch.add, T.add, T.__add__, T.__radd__, T.__iadd__)
_register(sub, torch.sub, T.sub, T.__sub__, T.__isub__)
_register(rsub, T.__rsub__, torch.rsub)
_register(mul, torch.mul, T.mul, T.__mul__, T.__rmul__, T.__imul__)
_register(div, torch.div, T.div, T.__truediv__, T.__itruediv__, torch.true_divide)
_register(neg, torch.neg, T.neg, T.__neg__)
_register(pow_, torch.pow, T.pow, T.__pow__)
_register(matmul, torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm)
_register(lambda x, y: matmul(y, x), T.__rmatmul__)
_register(linear, F.linear)
_register(sum_, torch.sum, T.sum)
_register(mean, torch.mean, T.mean)
_register(mse_loss, F.mse_loss)
_register(reshape, torch.reshape, T.reshape, T.view)
_register(view_as, T.view_as, T.reshape_as)
_register(flatten, torch.flatten, T.flatten)
_register(transpose, torch.transpose, T.transpose)
_register(t, torch.t, T.t)
_register(permute, torch.permute, T.permute)
_register(expand, T.expand)
_register(unsqueeze, torch.unsqueeze, T.unsqueeze)
_register(squeeze, torch.squeeze, T.squeeze)
_register(getitem, T.__getitem__)
_register(clone, torch.clone, T.clone)
_register(contiguous, T.contiguous)
_register(cat, torch.cat)
_register(stack, torch.stack)
_register(add_, T.add_)
_register(sub_, T.sub_)
_register(mul_, T.mul_)
_register(zero_, T.zero_)
