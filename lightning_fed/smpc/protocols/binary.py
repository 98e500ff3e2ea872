"""Comparison by arithmetic-to-binary conversion (CrypTen: Knott et al., "CrypTen: Secure Multi-Party Computation
Meets Machine Learning", NeurIPS 2021, Appendix C.1), the sign bit back to arithmetic with a dealer bit.

1. **A2B.** Party ``i``'s arithmetic share ``x_i`` is a valid XOR sharing of itself (party ``i`` holds ``x_i``, the
   others 0). The parties add these XOR-shared 64-bit words with a Kogge-Stone carry-lookahead adder: generate
   ``G = x & y``, propagate ``P = x ^ y``, then for ``s = 1, 2, 4, ..., 32``: ``G ^= P & (G << s)``,
   ``P &= P << s``, all on whole int64 words, so 7 rounds of ANDs (``log2 64 + 1``) whatever the tensor size.
2. **AND** of XOR-shared words by binary Beaver triples from the dealer (``c = a & b``): open ``e = x ^ a``,
   ``f = y ^ b``; ``z_i = c_i ^ (e & b_i) ^ (f & a_i)`` and party 0 also XORs ``e & f``.
3. **B2A** of the sign bit ``b``: the dealer shares a random bit ``r`` both by XOR and arithmetically; the parties open
   ``c = b ^ r`` (a uniform bit) and set ``[b] = c + (1 - 2c) [r]``.

The sign bit of ``x - y`` is ``x < y`` whenever ``|x - y| < 2^63``; ReLU, max, argmax and max-pooling follow.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.smpc.parties import Parties
    >>> p = Parties((sy.VirtualWorker(id="b"), sy.VirtualWorker(id="a")), sy.VirtualWorker(id="dealer"))
    >>> p.open(msb(p, p.share(torch.tensor([-3, 0, 5, -2**62]))))
    tensor([1, 0, 0, 1])
"""

from __future__ import annotations

from lightning_fed.smpc import provider
from lightning_fed.smpc.parties import PARTY, Parties, Shares
from lightning_fed.smpc.protocols.arithmetic import beaver


def and_(p: Parties, x: Shares, y: Shares) -> Shares:
    """Bitwise AND of XOR-shared int64 words ``x`` and ``y`` (same shape)."""
    sa, sb, sc = provider.binary_triple(p, x.shape)
    masked_x, masked_y = p.map("xor_mask_pair", x, sa, y, sb)
    e, f = p.open_xor(masked_x), p.open_xor(masked_y)
    return p.map("and_combine", PARTY, sc, e, sb, sa, f)


def add(p: Parties, x: Shares, y: Shares) -> Shares:
    """``x + y`` (mod ``2**64``) of XOR-shared words by a Kogge-Stone adder (7 AND rounds)."""
    g = and_(p, x, y)
    prop = p.map("xor", x, y)
    p0 = prop
    for s in (1, 2, 4, 8, 16):
        stacked = and_(
            p, p.map("stack", [prop, prop]), p.map("stack", [p.map("lshift", g, s), p.map("lshift", prop, s)])
        )
        g = p.map("xor", g, p.map("getitem", stacked, 0))
        prop = p.map("getitem", stacked, 1)
    g = p.map("xor", g, and_(p, prop, p.map("lshift", g, 32)))
    return p.map("xor", p0, p.map("lshift", g, 1))


def b2a_bit(p: Parties, bit: Shares) -> Shares:
    """An XOR-shared bit (each share 0 or 1) as an arithmetic sharing of the same bit."""
    r_xor, r_arith = provider.bit_pair(p, bit.shape)
    c = p.open_xor(p.map("xor", bit, r_xor)) & 1
    return p.map("first", PARTY, p.map("mul", r_arith, 1 - 2 * c), c)


def msb(p: Parties, x: Shares) -> Shares:
    """The sign bit of the shared ``x`` (1 where ``x < 0``), arithmetically shared as 0/1."""
    p.require_provider(provider.COMPARISON)
    words = [p.map("own", PARTY, k, x) for k in range(p.n)]
    while len(words) > 1:  # a tree of adders: ceil(log2 n) levels
        nxt = [add(p, words[k], words[k + 1]) for k in range(0, len(words) - 1, 2)]
        if len(words) % 2:
            nxt.append(words[-1])
        words = nxt
    return b2a_bit(p, p.map("msb", words[0]))


def select(p: Parties, bit: Shares, a: Shares, b: Shares) -> Shares:
    """``b + bit * (a - b)``: ``a`` where the 0/1 ``bit`` is 1, else ``b`` (one Beaver product, no truncation)."""
    return p.map("add", b, beaver(p, "mul", bit, p.map("sub", a, b)))
