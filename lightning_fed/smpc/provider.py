"""The crypto provider (trusted dealer): correlated randomness for the protocols, from a CSPRNG.

Every value is drawn from ChaCha20 keystreams under fresh ``os.urandom`` keys
(:func:`~lightning_fed.smpc.ring.random_ring`) and secret-shared among the workers by the dealer itself
(``Parties.deal``: the dealer's worker sends each share straight to its holder; the dealer keeps nothing). The dealer
sees the randomness, never the parties' values: it must not collude with a share holder (docs/privacy.md).

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.smpc.parties import Parties
    >>> p = Parties((sy.VirtualWorker(id="b"), sy.VirtualWorker(id="a")), sy.VirtualWorker(id="dealer"))
    >>> a, b, c = beaver_triple(p, "matmul", (2, 3), (3, 4))
    >>> bool((torch.matmul(p.open(a), p.open(b)) == p.open(c)).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_fed.smpc import ring
from lightning_fed.smpc.parties import Parties, Shares

_WHAT = {
    "mul": "multiplication",
    "matmul": "matmul",
    "conv2d": "conv2d",
    "conv2d_input_grad": "conv2d backward",
    "conv2d_weight_grad": "conv2d backward",
}
COMPARISON = "comparison (relu, max, argmax, max_pool2d)"


def beaver_triple(p: Parties, kind: str, shape_x: Sequence[int], shape_y: Sequence[int],
                  **kwargs: Any) -> tuple[Shares, Shares, Shares]:  # fmt: skip
    """Shares of uniform ``a``, ``b`` and ``c = op(a, b)`` for the bilinear ``kind`` (Beaver, CRYPTO 1991)."""
    p.require_provider(_WHAT[kind])
    a, b = ring.random_ring(shape_x), ring.random_ring(shape_y)
    sa, sb, sc = p.deal(_WHAT[kind], (a, b, ring.BILINEAR[kind](a, b, **kwargs)))
    return sa, sb, sc


def binary_triple(p: Parties, shape: Sequence[int]) -> tuple[Shares, Shares, Shares]:
    """XOR shares of uniform words ``a``, ``b`` and ``c = a & b`` (binary Beaver triples, for AND)."""
    a, b = ring.random_ring(shape), ring.random_ring(shape)
    sa, sb, sc = p.deal(COMPARISON, (a, b, a & b), xor=(True, True, True))
    return sa, sb, sc


def bit_pair(p: Parties, shape: Sequence[int]) -> tuple[Shares, Shares]:
    """A uniform bit ``r`` shared twice: by XOR and arithmetically (for B2A of a bit)."""
    r = ring.random_ring(shape) & 1
    r_xor, r_arith = p.deal(COMPARISON, (r, r.clone()), xor=(True, False))
    return r_xor, r_arith


def truncation_pair(p: Parties, shape: Sequence[int], divisor: int) -> tuple[Shares, Shares]:
    """Shares of uniform ``r`` and ``floor(r / divisor)`` (ABY3's truncation pair, for more than two parties)."""
    r = ring.random_ring(shape)
    sr, sr_div = p.deal("truncation", (r, torch.div(r, divisor, rounding_mode="floor")))
    return sr, sr_div
