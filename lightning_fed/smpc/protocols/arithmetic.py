"""Products of secret-shared values by Beaver triples, and truncation after fixed-point products.

**Beaver multiplication** (Beaver, CRYPTO 1991), for any bilinear ``op`` (elementwise ``*``, ``matmul``, ``conv2d``):
the dealer shares a triple ``a, b, c = op(a, b)`` with ``a, b`` uniform in ``Z_(2^64)``; the parties open
``e = x - a`` and ``f = y - b`` (uniform, so they reveal nothing about ``x, y``) and each computes
``z_i = c_i + op(e, b_i) + op(x_i, f)``; the shares sum to ``op(x, y)``.

**Truncation** divides a shared value by a public ``d`` (the fixed-point scale after a product, or a batch size):

- two parties: SecureML's local truncation (Mohassel & Zhang, IEEE S&P 2017, Section 4.1): no communication; the
  result is ``x / d`` up to one unit, except with probability about ``|x| / 2^63`` per element. The truncated
  shares are each confined to ``[-2^63 / d, 2^63 / d)``, so a fresh sharing of zero is added (as CrypTen's
  pseudo-random zero sharing does) to make them uniform on the ring again;
- more parties: ABY3's truncation pair (Mohassel & Rindal, CCS 2018, Section 5.1.2, "Pi_trunc2"): the dealer shares
  ``r`` and ``floor(r / d)``, the parties open ``z = x - r`` (uniform) and set ``floor(z / d) + floor(r / d)``; the same
  error bounds.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.smpc.parties import Parties
    >>> p = Parties((sy.VirtualWorker(id="b"), sy.VirtualWorker(id="a")), sy.VirtualWorker(id="dealer"))
    >>> x, y = p.share(torch.tensor([[1, 2], [3, 4]])), p.share(torch.tensor([[2, 0], [0, 2]]))
    >>> p.open(beaver(p, "matmul", x, y))
    tensor([[2, 4],
            [6, 8]])
    >>> p.open(truncate(p, p.share(torch.tensor([7000, -7000])), 1000))
    tensor([ 7, -7])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_fed.smpc import provider
from lightning_fed.smpc.parties import PARTY, Parties, Shares


def beaver(p: Parties, kind: str, x: Shares, y: Shares, **kwargs: Any) -> Shares:
    """``op(x, y)`` for a bilinear ``kind`` of :data:`~lightning_fed.smpc.ring.BILINEAR` (``kwargs``: its options,
    e.g. conv2d's stride and padding)."""
    sa, sb, sc = provider.beaver_triple(p, kind, x.shape, y.shape, **kwargs)
    masked_x, masked_y = p.map("mask_pair", x, sa, y, sb)
    e, f = p.open(masked_x), p.open(masked_y)
    return p.map("beaver", kind, sc, e, sb, x, f, **kwargs)


def truncate(p: Parties, x: Shares, divisor: int) -> Shares:
    """``x / divisor`` (floor, up to one unit; see the module docstring for the error probability)."""
    if divisor == 1:
        return x
    if p.n == 2:  # the truncated shares are no longer uniform on the ring: re-randomise with a sharing of zero
        return p.map("add", p.map("trunc", x, divisor, PARTY), p.share(torch.zeros(x.shape, dtype=torch.int64)))
    sr, sr_div = provider.truncation_pair(p, x.shape, divisor)
    z = p.open(p.map("sub", x, sr))
    return p.map("first", PARTY, sr_div, torch.div(z, divisor, rounding_mode="floor"))


def add_public(p: Parties, x: Shares, c: Tensor | int) -> Shares:
    """``x + c`` for a public ring value ``c`` (the first party adds it)."""
    return p.map("first", PARTY, x, c)


def public_to_shares(p: Parties, c: Tensor) -> Shares:
    """A public value as a (trivial) sharing: the first party holds ``c``, the others zero."""
    zeros = torch.zeros_like(c)
    return p.place([c.clone() if i == 0 else zeros.clone() for i in range(p.n)])
