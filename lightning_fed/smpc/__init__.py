"""Secret-shared computation (PySyft 0.2's ``fix_precision().share(...)``) on torch 2.x.

Additive secret sharing over ``Z_(2^64)`` among two or more workers, a crypto provider (trusted dealer) for Beaver
triples, truncation after fixed-point products, comparison by CrypTen's A2B conversion, a small autograd tape and
module/optimizer support. See docs/smpc.md and the security model in docs/privacy.md.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed import smpc
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> x = smpc.share(torch.tensor([3.0, -1.0]), bob, alice, crypto_provider=james)
    >>> y = smpc.share(torch.tensor([2.0, 5.0]), bob, alice, crypto_provider=james)
    >>> (x > y).get().float_precision()
    tensor([1., 0.])
"""

from lightning_fed.smpc import approximations, comparisons, convolution, functional  # register the secure ops
from lightning_fed.smpc.encoding import INTEGER, FixedPoint, FixedPrecisionTensor
from lightning_fed.smpc.shares import AdditiveSharingTensor, UnsupportedOperationError, share

__all__ = [
    "INTEGER",
    "AdditiveSharingTensor",
    "FixedPoint",
    "FixedPrecisionTensor",
    "UnsupportedOperationError",
    "approximations",
    "comparisons",
    "convolution",
    "functional",
    "share",
]
