"""Per-sample clipping hooks on an unchanged module, attached in place: Opacus' per-sample gradients (``"hooks"``) or
:class:`~lightning_fed.privacy.dp.ghost.GhostClipper` (``"ghost"``), chosen by :func:`attach_per_sample_clipping`;
and a reset for unfinished steps.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> reset_grad_samples(net)  # harmless on a module without hooks
    >>> net.weight.grad_sample is None
    True
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp.accountant import require_opacus
from lightning_fed.privacy.dp.ghost import GhostClipper, unsupported_layers

_OPACUS_ATTRS = ("grad_sample", "_current_grad_sample", "_norm_sample")


def _validate(module: nn.Module) -> None:
    require_opacus("sample-level differential privacy")
    from opacus.grad_sample import GradSampleModule

    errors = GradSampleModule.validate(module, strict=False)
    if errors:
        raise FederatedConfigError(
            f"DPConfig(level='sample') needs per-sample gradients, which layers with buffers break ({errors[0]}): "
            "replace BatchNorm with GroupNorm/LayerNorm (opacus.validators.ModuleValidator.fix(model) does it)."
        )


def attach_grad_sample_hooks(module: nn.Module, loss_reduction: str = "mean") -> Any:
    """Attach Opacus' per-sample-gradient hooks to ``module`` in place (no wrapper); returns the hooks object
    (``.remove_hooks()`` / ``.cleanup()`` take them off). Refuses layers with buffers (BatchNorm), as Opacus does."""
    _validate(module)
    from opacus.grad_sample import GradSampleModule

    try:
        from opacus.grad_sample import GradSampleHooks
    except ImportError:  # older Opacus: the wrapper class registers the same hooks on the module's layers
        GradSampleHooks = GradSampleModule
    return GradSampleHooks(module, batch_first=True, loss_reduction=loss_reduction, strict=False)


def resolve_grad_sample_mode(module: nn.Module, mode: str) -> str:
    """``"ghost"`` or ``"hooks"`` for ``module`` and ``DPConfig.grad_sample_mode`` ``mode`` (``"auto"``: ghost when
    every layer with trainable parameters is a Linear or a Conv2d)."""
    unsupported = unsupported_layers(module)
    if mode == "ghost" and unsupported:
        raise FederatedConfigError(
            f"DPConfig `grad_sample_mode='ghost'` clips Linear and Conv2d (groups=1, zero padding) layers only and "
            f"the model has {', '.join(unsupported)}: use grad_sample_mode='hooks' (Opacus' per-sample gradients) "
            "or 'auto'."
        )
    if mode == "auto":
        return "hooks" if unsupported else "ghost"
    return mode


def attach_per_sample_clipping(module: nn.Module, loss_reduction: str = "mean", mode: str = "auto") -> Any:
    """The hooks of ``mode`` (see :func:`resolve_grad_sample_mode`) attached to ``module``: a
    :class:`~lightning_fed.privacy.dp.ghost.GhostClipper` or Opacus' hooks object."""
    if resolve_grad_sample_mode(module, mode) == "hooks":
        return attach_grad_sample_hooks(module, loss_reduction)
    _validate(module)
    return GhostClipper(module)


def reset_grad_samples(module: nn.Module) -> None:
    """Forget per-sample state left by an unfinished step (activations, counters, ``grad_sample``)."""
    for sub in module.modules():
        if hasattr(sub, "activations"):
            sub.activations = []
        if hasattr(sub, "max_batch_len"):
            del sub.max_batch_len
    for p in module.parameters():
        for attr in _OPACUS_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)
        if hasattr(p, "_forward_counter"):
            p._forward_counter = 0
        p.grad_sample = None
