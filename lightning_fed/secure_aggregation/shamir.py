"""Shamir secret sharing, t-of-n, over the prime field ``GF(2**521 - 1)``.

A secret ``s`` (an integer below the prime; 32-byte keys as big-endian integers) is the constant term of a random
polynomial ``f`` of degree ``t - 1``; share ``i`` is ``(i, f(i))`` for ``i = 1..n``. Any ``t`` shares rebuild ``s`` by
Lagrange interpolation at 0; fewer reveal nothing about it (every secret is equally likely given ``t - 1`` shares).
The Mersenne prime ``2**521 - 1`` holds any 256-bit secret with room to spare.

Example:
    >>> from lightning_fed.secure_aggregation.prg import SecretSource
    >>> shares = split(1234567, num_shares=5, threshold=3, source=SecretSource(seed=0))
    >>> reconstruct(shares[:3], threshold=3), reconstruct([shares[4], shares[1], shares[2]], threshold=3)
    (1234567, 1234567)
    >>> reconstruct_bytes(split_bytes(b"k" * 32, 5, 3, SecretSource(seed=0))[2:], 3, length=32) == b"k" * 32
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lightning_fed.secure_aggregation.config import SecureAggregationError
from lightning_fed.secure_aggregation.prg import SecretSource

PRIME = 2**521 - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


@dataclass(frozen=True, repr=False)
class Share:
    """Point ``(x, y)`` of the sharing polynomial; ``x`` is the holder's 1-based index. ``repr`` hides ``y``."""

    x: int
    y: int

    def __repr__(self) -> str:
        return f"Share(x={self.x})"

    def to_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, data: bytes) -> Share:
        return cls(x, int.from_bytes(data, "big"))


def split(secret: int, num_shares: int, threshold: int, source: SecretSource) -> list[Share]:
    """``num_shares`` shares of ``secret``, any ``threshold`` of which rebuild it."""
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be an integer in [0, 2**521 - 1)")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"need 1 <= threshold <= num_shares, got threshold={threshold}, num_shares={num_shares}")
    coefficients = [secret] + [source.below(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def reconstruct(shares: Sequence[Share], threshold: int) -> int:
    """The secret from at least ``threshold`` shares with distinct ``x`` (the first ``threshold`` are used)."""
    points = {s.x: s.y for s in shares}
    if len(points) < threshold:
        raise SecureAggregationError(
            f"cannot rebuild a secret from {len(points)} distinct shares: the threshold is {threshold}."
        )
    chosen = list(points.items())[:threshold]
    secret = 0
    for j, (xj, yj) in enumerate(chosen):
        num, den = 1, 1
        for m, (xm, _) in enumerate(chosen):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


def split_bytes(secret: bytes, num_shares: int, threshold: int, source: SecretSource) -> list[Share]:
    """Shares of a byte string (at most 65 bytes), read as a big-endian integer."""
    return split(int.from_bytes(secret, "big"), num_shares, threshold, source)


def reconstruct_bytes(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """The byte string of ``length`` bytes that :func:`split_bytes` shared."""
    return reconstruct(shares, threshold).to_bytes(length, "big")
