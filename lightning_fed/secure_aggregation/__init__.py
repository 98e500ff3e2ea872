"""Secure aggregation (Bonawitz et al. 2017): the server learns the sum of the workers' updates, not any one of them.

One concern a file: :mod:`.quantization` (fixed point in ``Z_(2^k)``), :mod:`.prg` (ChaCha20 masks), :mod:`.keys`
(X25519 agreement, HKDF, share encryption), :mod:`.shamir` (t-of-n sharing), :mod:`.client` and :mod:`.server` (the
two sides), :mod:`.protocol` (the round with dropout recovery), :mod:`.config` (``SecureAggregationConfig``) and
:mod:`.aggregator` (``SecureAggregator``, wrapping any weighted-sum aggregator).

Example:
    >>> import torch
    >>> from lightning_fed.aggregation import FedAvg
    >>> agg = SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0))
    >>> agg.begin_round([torch.zeros(1)], participants=["a", "b"])
    >>> for w, v in (("a", 1.0), ("b", 3.0)):
    ...     agg.accumulate([torch.tensor([v])], weight=1, worker_id=w)
    >>> agg.finalize([torch.zeros(1)])
    [tensor([2.])]
"""

from lightning_fed.secure_aggregation.aggregator import SecureAggregator
from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.protocol import SecAggClient, SecAggServer, SecureAggregationRound, secure_sum
from lightning_fed.secure_aggregation.quantization import check_overflow, dequantize, quantize

__all__ = [
    "SecAggClient",
    "SecAggServer",
    "SecureAggregationConfig",
    "SecureAggregationError",
    "SecureAggregationRound",
    "SecureAggregator",
    "check_overflow",
    "dequantize",
    "quantize",
    "secure_sum",
]
