"""``SecureAggregationConfig``: the settings of secure aggregation, validated when built and for each round's size.

Example:
    >>> config = SecureAggregationConfig(bits=32, clip=100.0, fractional_bits=16)
    >>> config.threshold_for(5), config.bits
    (3, 32)
    >>> SecureAggregationConfig(bits=16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: SecureAggregationConfig `bits=16` is not valid: ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.secure_aggregation.quantization import check_overflow

ROUNDINGS = ("stochastic", "nearest")


class SecureAggregationError(LightningFedError, RuntimeError):
    """A secure-aggregation round cannot finish (too many dropouts) or a party broke the protocol."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SecureAggregationConfig:
    """How updates are quantized, masked and shared.

    Args:
        threshold: the Shamir threshold ``t``: how many participants must survive a round (and answer the unmasking
            request) for it to finish; at most ``n - t`` may drop out after sharing. ``None`` (default): a majority,
            ``n // 2 + 1``. It must lie in ``[n // 2 + 1, n]``: at or below ``n / 2`` a server that lies about who
            dropped out could collect both masks of one worker (Bonawitz et al. 2017, section 4).
        bits: the ring ``Z_(2^k)`` masked updates live in: 32 or 64 (default). With 32 bits choose a smaller
            ``clip`` and ``fractional_bits``: ``n * ceil(clip * 2**fractional_bits)`` must stay below ``2**31``.
        clip: each coordinate of a worker's weighted update (``weight * update``, weight = its number of samples)
            is clipped to ``[-clip, clip]`` before quantization. Default ``2**20``.
        fractional_bits: fixed-point scale ``2**fractional_bits``: the quantization step. Default 24.
        rounding: ``"stochastic"`` (default: unbiased, floor or ceil with probability given by the remainder;
            seeded) or ``"nearest"`` (round half to even; deterministic).
        seed: ``None`` (default) draws keys, self-mask seeds, Shamir coefficients and rounding from the operating
            system (secure); an int derives them all from the seed and the round (reproducible runs; not secure).
    """

    threshold: int | None = None
    bits: int = 64
    clip: float = float(2**20)
    fractional_bits: int = 24
    rounding: str = "stochastic"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or self.bits not in (32, 64):
            raise FederatedConfigError(
                f"SecureAggregationConfig `bits={self.bits!r}` is not valid: masked updates live in the ring "
                "Z_(2^k) for k in {32, 64}; pass bits=32 or bits=64."
            )
        if self.threshold is not None and (not _is_int(self.threshold) or self.threshold < 1):
            raise FederatedConfigError(
                f"SecureAggregationConfig `threshold={self.threshold!r}` is not valid: pass an integer >= 1 (the "
                "number of participants that must survive a round), or None for a majority (n // 2 + 1)."
            )
        ok = isinstance(self.clip, (int, float)) and not isinstance(self.clip, bool)
        if not ok or not math.isfinite(self.clip) or self.clip <= 0:
            raise FederatedConfigError(
                f"SecureAggregationConfig `clip={self.clip!r}` is not valid: pass a finite number > 0 (the bound on "
                "each coordinate of weight * update)."
            )
        if not _is_int(self.fractional_bits) or not 0 <= self.fractional_bits < self.bits - 1:
            raise FederatedConfigError(
                f"SecureAggregationConfig `fractional_bits={self.fractional_bits!r}` is not valid for "
                f"bits={self.bits}: pass an integer in [0, {self.bits - 2}]."
            )
        if float(self.clip) * 2.0**self.fractional_bits > 2.0**53:
            raise FederatedConfigError(
                f"SecureAggregationConfig `clip={self.clip!r}` with `fractional_bits={self.fractional_bits}` scales "
                "updates beyond 2**53, where float64 no longer holds every integer: lower clip or fractional_bits."
            )
        check_overflow(2, self.clip, self.fractional_bits, self.bits)  # the smallest round; each round checks its n
        if self.rounding not in ROUNDINGS:
            raise FederatedConfigError(
                f"SecureAggregationConfig `rounding={self.rounding!r}` is not valid: choose one of {ROUNDINGS}."
            )
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise FederatedConfigError(
                f"SecureAggregationConfig `seed={self.seed!r}` is not valid: pass an integer >= 0, or None."
            )

    def threshold_for(self, num_participants: int) -> int:
        """The threshold ``t`` for a round of ``num_participants``; raises if it is out of range."""
        n = num_participants
        if n < 2:
            raise FederatedConfigError(
                f"secure aggregation needs at least 2 participants per round, got {n}: with one, the sum is that "
                "worker's update. Sample more clients per round, or turn secure aggregation off."
            )
        t = n // 2 + 1 if self.threshold is None else self.threshold
        if not n // 2 + 1 <= t <= n:
            raise FederatedConfigError(
                f"SecureAggregationConfig `threshold={t}` is out of range for {n} participants: pass a threshold in "
                f"[{n // 2 + 1}, {n}] (a majority, so that a server lying about dropouts cannot unmask a worker, and "
                "at most the number of participants), or None for n // 2 + 1."
            )
        return t
