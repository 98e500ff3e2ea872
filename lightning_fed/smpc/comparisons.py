"""Comparisons, ReLU, max, argmax and max-pooling on shared values, by the sign bit from CrypTen's
arithmetic-to-binary conversion (:mod:`.protocols.binary`), each with its backward rule.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.smpc import share
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob-c", "alice-c", "james-c"))
    >>> x = share(torch.tensor([-1.0, 2.0]), bob, alice, crypto_provider=james)
    >>> (x > 0).get().float_precision()
    tensor([0., 1.])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.smpc import autograd
from lightning_fed.smpc.functional import _new, neg, reshape, sub, transpose
from lightning_fed.smpc.parties import Shares
from lightning_fed.smpc.protocols.arithmetic import add_public, beaver, public_to_shares
from lightning_fed.smpc.protocols.binary import msb
from lightning_fed.smpc.shares import HANDLERS, AdditiveSharingTensor, UnsupportedOperationError

AST = AdditiveSharingTensor
T = Tensor


def _bits(x: AST, bits: Shares) -> AST:
    """A 0/1 shared bit as a value in ``x``'s encoding (``bit * scale``)."""
    return x._like(x.parties.map("mul", bits, x.encoding.scale))


def _diff(x: Any, y: Any) -> AST:
    with torch.no_grad():
        return sub(x, y) if isinstance(x, AST) else neg(sub(y, x))


def lt(x: Any, y: Any) -> AST:
    d = _diff(x, y)
    return _bits(d, msb(d.parties, d.shares))


def gt(x: Any, y: Any) -> AST:
    return lt(y, x) if isinstance(y, AST) else lt(neg(x) if isinstance(x, AST) else x, -torch.as_tensor(y))


def _one_minus(x: AST, bits: AST) -> AST:
    return x._like(add_public(x.parties, bits.parties.map("neg", bits.shares), x.encoding.scale))


def ge(x: Any, y: Any) -> AST:
    b = lt(x, y)
    return _one_minus(b, b)


def le(x: Any, y: Any) -> AST:
    b = gt(x, y)
    return _one_minus(b, b)


def eq(x: Any, y: Any) -> AST:
    d = _diff(x, y)
    p = d.parties
    both = msb(p, p.map("stack", [d.shares, p.map("neg", d.shares)]))  # [x < y, y < x] in one conversion
    total = p.map("add", p.map("getitem", both, 0), p.map("getitem", both, 1))
    return _one_minus(d, _bits(d, total))


def ne(x: Any, y: Any) -> AST:
    e = eq(x, y)
    return _one_minus(e, e)


def relu(x: AST, inplace: bool = False) -> AST:
    p = x.parties
    positive = add_public(p, p.map("neg", msb(p, x.shares)), 1)  # 1 - sign bit
    out = beaver(p, "mul", positive, x.shares)
    return _new(x, out, (x,), lambda g: (g._like(beaver(p, "mul", positive, g.shares)),))


def _tree_max(x: AST, extra: Shares | None = None) -> tuple[Shares, Shares | None]:
    """Max over the last dim by a tournament (``ceil(log2 m)`` comparison rounds, the first maximum wins ties);
    ``extra`` (shape ``(..., m, k)``) follows the winners, e.g. indices or one-hot vectors."""
    p = x.parties
    v = x.shares
    while v.shape[-1] > 1:
        m = v.shape[-1]
        h = m // 2
        a = p.map("getitem", v, (..., slice(0, 2 * h, 2)))
        b = p.map("getitem", v, (..., slice(1, 2 * h, 2)))
        diff = p.map("sub", a, b)
        keep_a = add_public(p, p.map("neg", msb(p, diff)), 1)  # a >= b
        if extra is None:
            chosen = p.map("add", b, beaver(p, "mul", keep_a, diff))
        else:
            ea = p.map("getitem", extra, (..., slice(0, 2 * h, 2), slice(None)))
            eb = p.map("getitem", extra, (..., slice(1, 2 * h, 2), slice(None)))
            both = p.map("cat", [p.map("unsqueeze", diff, -1), p.map("sub", ea, eb)], -1)
            bit = p.map("contiguous", p.map("expand", p.map("unsqueeze", keep_a, -1), tuple(both.shape)))
            sel = beaver(p, "mul", bit, both)
            chosen = p.map("add", b, p.map("getitem", sel, (..., 0)))
            chosen_extra = p.map("add", eb, p.map("getitem", sel, (..., slice(1, None))))
            rest_e = p.map("getitem", extra, (..., slice(2 * h, None), slice(None)))
            extra = p.map("cat", [chosen_extra, rest_e], -2) if m % 2 else chosen_extra
        rest = p.map("getitem", v, (..., slice(2 * h, None)))
        v = p.map("cat", [chosen, rest], -1) if m % 2 else chosen
    return v, extra


def _last(x: AST, dim: int | None) -> AST:
    with torch.no_grad():
        if dim is None:
            return reshape(x, (-1,))
        return transpose(x, dim, -1) if dim % x.dim() != x.dim() - 1 else x


def _check_no_grad(x: AST, name: str) -> None:
    if autograd.needs_grad(x):
        raise UnsupportedOperationError(f"{name} of a shared tensor that requires grad has no backward rule here.")


def argmax(x: AST, dim: int | None = None, keepdim: bool = False) -> AST:
    _check_no_grad(x, "argmax")
    y = _last(x, dim)
    p = x.parties
    m = y.shape[-1]
    index = torch.arange(m, dtype=torch.int64).view(m, 1).expand(*y.shape, 1).contiguous()
    _, idx = _tree_max(y, public_to_shares(p, index))
    idx = p.map("getitem", idx, (..., 0, 0))
    if dim is not None:
        idx = p.map("transpose", p.map("unsqueeze", idx, -1), dim, -1)
        idx = idx if keepdim else p.map("squeeze", idx, dim)
    out = x._like(p.map("mul", idx, x.encoding.scale))
    return out


def max_(x: AST, dim: int | None = None, keepdim: bool = False) -> AST:
    """The maximum (over ``dim``): the values only, as PySyft 0.2 returned them."""
    _check_no_grad(x, "max")
    y = _last(x, dim)
    p = x.parties
    v, _ = _tree_max(y)
    v = p.map("getitem", v, (..., 0))
    if dim is not None:
        v = p.map("transpose", p.map("unsqueeze", v, -1), dim, -1)
        v = v if keepdim else p.map("squeeze", v, dim)
    return x._like(v)


def max_pool2d(x: AST, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> AST:  # fmt: skip
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    kh, kw = pair(kernel_size)
    sh, sw = pair(stride if stride not in (None, []) else kernel_size)
    if pair(padding) != (0, 0) or pair(dilation) != (1, 1) or ceil_mode or return_indices:
        raise UnsupportedOperationError(
            "max_pool2d on shared tensors supports padding=0, dilation=1, ceil_mode=False, return_indices=False: "
            "pad the input first (F.pad) if needed."
        )
    if x.dim() != 4:
        raise UnsupportedOperationError(f"max_pool2d on shared tensors takes (N, C, H, W), got {tuple(x.shape)}.")
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    rows = (torch.arange(oh) * sh).view(oh, 1, 1, 1) + torch.arange(kh).view(1, 1, kh, 1)
    cols = (torch.arange(ow) * sw).view(1, ow, 1, 1) + torch.arange(kw).view(1, 1, 1, kw)
    index = (rows * w + cols).reshape(-1)  # (oh, ow, kh, kw) flat input positions
    p = x.parties
    windows = p.map(
        "reshape", p.map("take", p.map("reshape", x.shares, (n, c, h * w)), index, 2), (n, c, oh * ow, kh * kw)
    )
    track = autograd.needs_grad(x)
    onehot = None
    if track:
        eye = torch.eye(kh * kw, dtype=torch.int64).expand(n, c, oh * ow, kh * kw, kh * kw).contiguous()
        onehot = public_to_shares(p, eye)
    v, sel = _tree_max(x._like(windows), onehot)
    out = p.map("reshape", v, (n, c, oh, ow))
    if not track:
        return x._like(out)
    sel = p.map("reshape", sel, (n, c, oh * ow, kh * kw))

    def back(g: AST) -> tuple[AST]:
        gw = p.map(
            "contiguous", p.map("expand", p.map("reshape", g.shares, (n, c, oh * ow, 1)), (n, c, oh * ow, kh * kw))
        )
        picked = p.map("reshape", beaver(p, "mul", sel, gw), (n, c, oh * ow * kh * kw))
        return (g._like(p.map("reshape", p.map("scatter_add", picked, index, 2, h * w), (n, c, h, w))),)

    return _new(x, out, (x,), back)


def _register(fn: Any, *funcs: Any) -> None:
    for func in funcs:
        HANDLERS[func] = fn


_register(relu, F.relu, torch.relu, T.relu)
_register(max_pool2d, F.max_pool2d)
_register(lt, torch.lt, T.lt, T.__lt__)
_register(gt, torch.gt, T.gt, T.__gt__)
_register(le, torch.le, T.le, T.__le__)
_register(ge, torch.ge, T.ge, T.__ge__)
_register(eq, torch.eq, T.eq, T.__eq__)
_register(ne, torch.ne, T.ne, T.__ne__)
_register(argmax, torch.argmax, T.argmax)
_register(max_, torch.max, T.max)
