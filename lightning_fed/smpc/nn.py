"""Modules in fixed point and secret-shared: ``model.fix_precision().share(bob, alice, crypto_provider=james)``.

A shared model keeps its class and ``forward``: its parameters are replaced (in each submodule's ``_parameters``) by
:class:`~lightning_fed.smpc.encoding.FixedPrecisionTensor` (after :func:`fix_precision_module`) and then by
:class:`~lightning_fed.smpc.shares.AdditiveSharingTensor` (after :func:`share_module`), so ``model(x)`` runs
``F.linear``/``F.conv2d``/``F.relu`` on shares and ``torch.optim.SGD(model.parameters(), lr)`` updates them.
:func:`get_module` and :func:`float_precision_module` undo the two steps.

Example:
    >>> import torch, lightning_fed as sy
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> model = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0]])), model.bias.fill_(0.5)
    >>> model = share_module(fix_precision_module(model), bob, alice, crypto_provider=james)
    >>> type(model.weight).__name__, list(bob._objects.values())[0].dtype
    ('AdditiveSharingTensor', torch.int64)
    >>> x = sy.smpc.share(torch.tensor([[3.0, 1.0]]), bob, alice, crypto_provider=james)
    >>> model(x).get().float_precision()
    tensor([[1.5000]])
    >>> float_precision_module(get_module(model)).weight
    Parameter containing:
    tensor([[ 1., -2.]], requires_grad=True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc.encoding import FixedPrecisionTensor
from lightning_fed.smpc.shares import AdditiveSharingTensor, share_encoded


def _slots(module: nn.Module) -> Iterator[tuple[nn.Module, str, Any]]:
    for sub in module.modules():
        for name, value in list(sub._parameters.items()):
            if value is not None:
                yield sub, name, value


def is_shared(module: nn.Module) -> bool:
    """Whether ``module`` holds secret-shared parameters."""
    return any(isinstance(v, AdditiveSharingTensor) for _, _, v in _slots(module))


def fix_precision_module(module: nn.Module, base: int = 10, precision_fractional: int = 3, **kwargs: Any) -> nn.Module:
    """Encode every parameter in fixed point (in place); returns ``module``."""
    if kwargs:
        raise FederatedConfigError(f"fix_precision() got unexpected arguments {sorted(kwargs)}: it takes base= and "
                                   "precision_fractional=.")  # fmt: skip
    for sub, name, value in _slots(module):
        if isinstance(value, (FixedPrecisionTensor, AdditiveSharingTensor)):
            raise FederatedConfigError(f"parameter {name!r} is already in fixed point: fix_precision() once.")
        if type(value).__name__ == "PointerTensor":
            raise FederatedConfigError(
                f"parameter {name!r} is at worker {value.location.id!r}: call model.get() before fix_precision()."
            )
        sub._parameters[name] = FixedPrecisionTensor.from_float(value.detach(), base, precision_fractional)
    return module


def share_module(module: nn.Module, *workers: Any, **kwargs: Any) -> nn.Module:
    """Secret-share every fixed-point parameter among ``workers`` (in place); ``kwargs`` as for ``share()``."""
    slots = list(_slots(module))
    for _, name, value in slots:
        if not isinstance(value, FixedPrecisionTensor):
            raise FederatedConfigError(
                f"parameter {name!r} is a {type(value).__name__}, not in fixed point: call model.fix_precision() "
                "before model.share(...)."
            )
    for sub, name, value in slots:
        sub._parameters[name] = share_encoded(value.child, value.encoding, value.dtype, workers, **kwargs)
    return module


def get_module(module: nn.Module) -> nn.Module:
    """Reconstruct every shared parameter (the workers hand over their shares) as fixed point, in place."""
    for sub, name, value in _slots(module):
        if isinstance(value, AdditiveSharingTensor):
            sub._parameters[name] = value.get()
    return module


def float_precision_module(module: nn.Module) -> nn.Module:
    """Decode every fixed-point parameter back to an ``nn.Parameter``, in place."""
    for sub, name, value in _slots(module):
        if isinstance(value, AdditiveSharingTensor):
            raise FederatedConfigError(
                f"parameter {name!r} is still shared: call model.get() before float_precision()."
            )
        if isinstance(value, FixedPrecisionTensor):
            sub._parameters[name] = nn.Parameter(value.float_precision())
    return module
