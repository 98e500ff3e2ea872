"""2-D convolution of shared values (public or shared weights), by Beaver triples on the unfolded input, with its
backward rule.

Example:
    >>> import torch, torch.nn.functional as F, lightning_fed as sy
    >>> from lightning_fed.smpc import share
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob-v", "alice-v", "james-v"))
    >>> x = share(torch.ones(1, 1, 3, 3), bob, alice, crypto_provider=james)
    >>> F.conv2d(x, torch.ones(1, 1, 2, 2)).get().float_precision().flatten().tolist()
    [4.0, 4.0, 4.0, 4.0]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fed.smpc import autograd
from lightning_fed.smpc.functional import _new, _pair, _public, add, reshape
from lightning_fed.smpc.protocols.arithmetic import beaver, truncate
from lightning_fed.smpc.shares import HANDLERS, AdditiveSharingTensor, UnsupportedOperationError

AST = AdditiveSharingTensor
T = Tensor


def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> AST:  # fmt: skip
    if isinstance(padding, str):
        raise UnsupportedOperationError(f"conv2d(padding={padding!r}) on shared tensors: pass the padding as ints.")
    kw = {"stride": stride, "padding": padding, "dilation": dilation}
    like = x if isinstance(x, AST) else weight
    p = like.parties
    scale = like.encoding.scale
    if isinstance(x, AST) and isinstance(weight, AST):
        like = _pair(x, weight)
        p = like.parties
        out = truncate(p, beaver(p, "conv2d", x.shares, weight.shares, groups=groups, **kw), scale)
    elif isinstance(x, AST):
        out = truncate(p, p.map("bilinear", "conv2d", x.shares, _public(x, weight), groups=groups, **kw), scale)
    else:
        out = truncate(p, p.map("bilinear", "conv2d", _public(weight, x), weight.shares, groups=groups, **kw), scale)
    if groups != 1 and autograd.needs_grad(x, weight):
        raise UnsupportedOperationError("backward of a grouped conv2d on shared tensors is not supported.")

    def back(g: AST) -> tuple[Any, Any]:
        gx = gw = None
        if isinstance(x, AST) and x.requires_grad:
            w_sh = weight.shares if isinstance(weight, AST) else None
            if w_sh is None:
                gx_sh = p.map("bilinear", "conv2d_input_grad", g.shares, _public(g, weight), input_shape=x.shape, **kw)
            else:
                gx_sh = beaver(p, "conv2d_input_grad", g.shares, w_sh, input_shape=tuple(x.shape), **kw)
            gx = g._like(truncate(p, gx_sh, scale))
        if isinstance(weight, AST) and weight.requires_grad:
            if isinstance(x, AST):
                gw_sh = beaver(p, "conv2d_weight_grad", x.shares, g.shares, weight_shape=tuple(weight.shape), **kw)
            else:
                gw_sh = p.map("bilinear", "conv2d_weight_grad", _public(g, x), g.shares,
                              weight_shape=tuple(weight.shape), **kw)  # fmt: skip
            gw = g._like(truncate(p, gw_sh, scale))
        return gx, gw

    result = _new(like, out, (x, weight), back)
    if bias is not None:
        result = add(result, reshape(bias, (1, -1, 1, 1)) if isinstance(bias, AST) else bias.view(1, -1, 1, 1))
    return result


def _register(fn: Any, *funcs: Any) -> None:
    for func in funcs:
        HANDLERS[func] = fn


_register(conv2d, F.conv2d, torch.conv2d)
