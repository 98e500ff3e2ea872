"""Per-sample clipping without per-sample gradients kept: norms and the clipped sum from activations and output grads.

For a layer ``y = a W^T + b`` a sample's weight gradient is ``B_i^T A_i`` (``A_i``: its inputs, ``B_i``: the loss
gradient at its outputs, one row per position ``t``), so

* its squared norm is ``||a_i||^2 ||b_i||^2`` for one position (a plain Linear: the "ghost norm", Goodfellow 2015),
  or ``<A_i A_i^T, B_i B_i^T>`` (Gram matrices, Li et al. 2022) when ``T^2 (in + out)`` is below ``2 in out``, and
  otherwise is read from the per-sample gradient ``B_i^T A_i`` of that layer alone, formed and dropped at once;
* the sum of the clipped gradients is one product ``(c B)^T A`` over the batch (``c``: the clip factors), the cost of
  an ordinary weight gradient: the book-keeping of Bu et al. 2023. No second backward, no per-sample gradients kept.

A ``Conv2d`` is the same layer on its unfolded input (``A = unfold(x)``, one position per output pixel); its
per-sample gradients are formed (a grouped convolution for one input channel, else a product over the input's
patches, gathered from a channels-last copy of it).

Autograd's own weight gradients would be thrown away, so they are not computed: a forward pre-hook takes
``requires_grad`` off the layer's trainable parameters for its call, and the forward hook puts it back and routes the
output through a function whose backward keeps the output's gradient (with the call's input) and passes it on. So
after ``backward()`` those parameters' ``.grad`` stay ``None`` until :meth:`GhostClipper.clipped_sum` gives the
private gradient (the non-private gradient is never formed, nor seen by ``on_after_backward`` hooks). A layer called
several times in one forward (shared weights) gets its per-sample gradients summed over the calls, and several
backwards before one optimizer step (gradient accumulation) give several batches of rows, as Opacus does.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> clipper = GhostClipper(net)
    >>> net(torch.ones(4, 3)).sum().backward()
    >>> net.weight.grad is None  # autograd's (non-private) weight gradient is not computed
    True
    >>> norms = clipper.per_sample_norms(list(net.parameters()), loss_reduction="sum")
    >>> [round(float(n), 4) for n in norms]  # each sample's gradient: weight ones(2, 3), bias ones(2)
    [2.8284, 2.8284, 2.8284, 2.8284]
    >>> clipper.remove_hooks()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fed.exceptions import LightningFedError
from lightning_fed.privacy.dp.functional import CLIP_EPSILON

#: The layers whose per-sample norms and clipped sums this module computes.
SUPPORTED = (nn.Linear, nn.Conv2d)


def unsupported_layers(module: nn.Module) -> list[str]:
    """The layers of ``module`` with trainable parameters of their own that :class:`GhostClipper` cannot handle
    (another type, or a parameter shared with another layer: its per-sample norm would mix the layers)."""
    out, seen = [], set()
    for name, sub in module.named_modules():
        own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        ok = type(sub) in SUPPORTED and not any(id(p) in seen for p in own)
        seen.update(id(p) for p in own)
        if isinstance(sub, nn.Conv2d):
            ok = ok and sub.groups == 1 and sub.padding_mode == "zeros" and not isinstance(sub.padding, str)
        if not ok:
            out.append(f"{name or type(module).__name__}: {type(sub).__name__}")
    return out


@dataclass
class _Layer:
    """A hooked layer's records: the finished backward passes (each a list of ``(A, B)`` per call), the open one."""

    module: nn.Module
    passes: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)
    current: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    pending: int = 0
    frozen: list[nn.Parameter] = field(default_factory=list)  # requires_grad taken off for the running call


class _Tap(torch.autograd.Function):
    """Identity on a layer's output whose backward hands the output's gradient to ``keep``; it takes the layer's
    parameters as inputs (so the output requires grad) and gives them no gradient."""

    @staticmethod
    def forward(ctx, output: Tensor, keep, *params: Tensor) -> Tensor:
        ctx.keep, ctx.num_params = keep, len(params)
        return output.clone()  # a fresh tensor: in-place activations after the layer stay allowed

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        ctx.keep(grad)
        return (grad, None) + (None,) * ctx.num_params


def conv2d_grad_samples(layer: nn.Conv2d, x: Tensor, grad: Tensor) -> Tensor:
    """Each sample's weight gradient of ``layer`` from its input and output gradient, as ``[n, out, kh * kw * in]``:
    the kernel's input channels last (:func:`conv2d_weight_layout` puts a sum of them in the weight's layout)."""
    n, c_in, (kh, kw), c_out = len(x), x.shape[1], layer.kernel_size, grad.shape[1]
    if c_in == 1 and n > 0:  # correlate each sample's input with its output gradient: one grouped convolution
        out = F.conv2d(
            x.transpose(0, 1),
            grad.reshape(n * c_out, 1, *grad.shape[2:]),
            padding=layer.padding,
            stride=layer.dilation,
            dilation=layer.stride,
            groups=n,
        )
        return out[:, :, :kh, :kw].reshape(n, c_out, kh * kw)
    (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation
    x = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    # the input's patches [n, oh, ow, kh, kw, in] from a channels-last copy of it: each patch row (kw, in) is one
    # contiguous run, so gathering them is a few long copies (the same patches in the weight's order, in is before
    # kh, kw, gather runs of kw numbers: 2.3x slower on the DP example's second convolution)
    x = x.permute(0, 2, 3, 1).contiguous()
    patches = x.unfold(1, dh * (kh - 1) + 1, sh).unfold(2, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    patches = patches[:, : grad.shape[2], : grad.shape[3]].permute(0, 1, 2, 4, 5, 3).reshape(n, -1, kh * kw * c_in)
    return torch.bmm(grad.flatten(2), patches)


def conv2d_weight_layout(layer: nn.Conv2d, summed: Tensor) -> Tensor:
    """A sum of :func:`conv2d_grad_samples` rows (``[out, kh * kw * in]``) in the layout of ``layer.weight``."""
    c_out, c_in, kh, kw = layer.weight.shape
    return summed.view(c_out, kh, kw, c_in).permute(0, 3, 1, 2)


class GhostClipper:
    """Hooks on ``module``'s Linear and Conv2d layers that keep what per-sample clipping needs (see the module doc).

    Args:
        module: the model, hooked in place; every layer with trainable parameters must be a Linear or a Conv2d
            (:func:`unsupported_layers` lists the others).
    """

    def __init__(self, module: nn.Module) -> None:
        self._layers: dict[nn.Module, _Layer] = {}
        self._handles = []
        for sub in module.modules():
            if isinstance(sub, SUPPORTED) and any(p.requires_grad for p in sub.parameters(recurse=False)):
                self._layers[sub] = _Layer(sub)
                self._handles.append(sub.register_forward_pre_hook(self._pre_hook))
                self._handles.append(sub.register_forward_hook(self._forward_hook))

    # -- recording ------------------------------------------------------------------------------------------------
    def _pre_hook(self, layer: nn.Module, inputs: tuple) -> None:
        if layer.training and torch.is_grad_enabled():
            record = self._layers[layer]
            record.frozen = [p for p in layer.parameters(recurse=False) if p.requires_grad]
            for p in record.frozen:
                p.requires_grad_(False)

    def _forward_hook(self, layer: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        record = self._layers[layer]
        frozen, record.frozen = record.frozen, []
        for p in frozen:
            p.requires_grad_(True)
        if not frozen or not isinstance(output, Tensor):
            return None
        record.pending += 1
        activation = inputs[0].detach()
        return _Tap.apply(output, lambda grad: self._keep(record, activation, grad.detach()), *frozen)

    @staticmethod
    def _keep(record: _Layer, x: Tensor, grad: Tensor) -> None:
        if isinstance(record.module, nn.Linear):
            n, steps = len(x), x.shape[1:-1].numel()
            x, grad = x.reshape(n, steps, x.shape[-1]), grad.reshape(n, steps, grad.shape[-1])  # [n, T, in/out]
        record.current.append((x, grad))
        record.pending -= 1
        if record.pending == 0:  # every call of this forward has had its backward: one batch of rows
            record.passes.append(record.current)
            record.current = []

    def reset(self) -> None:
        """Forget every record (an unfinished step, or a finished one); give back ``requires_grad`` that a forward
        which raised did not."""
        for record in self._layers.values():
            for p in record.frozen:
                p.requires_grad_(True)
            record.passes, record.current, record.pending, record.frozen = [], [], 0, []

    def remove_hooks(self) -> None:
        """Take the hooks off and forget the records."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.reset()

    cleanup = remove_hooks

    # -- per-sample norms and the clipped sum ---------------------------------------------------------------------
    def num_passes(self) -> int:
        """How many backward passes (batches of rows) the records hold: 1, or more with gradient accumulation."""
        counts = {len(r.passes) for r in self._layers.values() if r.passes}
        if len(counts) > 1:
            raise RuntimeError(f"per-sample clipping: layers saw different numbers of backward passes ({counts})")
        return counts.pop() if counts else 1

    def _terms(self, params: Sequence[Tensor], scale: bool) -> list[tuple[Tensor, list]]:
        """Per layer with records: each row's squared norm over its trainable ``params``, and per pass what the
        clipped sum needs (``("gram", A, B, s)``, or ``("sample", G_w, G_b, s)`` with ``"conv"`` for a
        convolution's, its kernel's channels last); the rows' gradients are ``s`` times
        these: ``n`` for a mean loss over ``n`` samples, as Opacus)."""
        wanted = {id(p) for p in params}
        out = []
        for layer, record in self._layers.items():
            if record.pending:
                raise LightningFedError(
                    f"per-sample clipping: {type(layer).__name__} ran {record.pending} forward(s) in training mode "
                    "whose output had no backward before the DP step, so its samples' gradients are unknown: run "
                    "extra forwards under torch.no_grad() or in eval mode."
                )
            if not record.passes:
                continue
            w = layer.weight if id(layer.weight) in wanted else None
            bias = layer.bias if layer.bias is not None and id(layer.bias) in wanted else None
            if w is None and bias is None:
                continue
            sq, parts = [], []
            for calls in record.passes:
                n = len(calls[0][0])
                factor = float(n) if scale else 1.0  # Opacus' "mean": each sample's gradient is n times its share
                if isinstance(layer, nn.Conv2d):
                    g_w = _total(conv2d_grad_samples(layer, a, b) for a, b in calls) if w is not None else None
                    g_b = _total(b.sum((2, 3)) for _, b in calls) if bias is not None else None
                    sq.append(_total(_sq_norms(g) for g in (g_w, g_b) if g is not None) * factor**2)
                    parts.append(("conv", g_w, g_b, factor))
                    continue
                steps, width_in, width_out = calls[0][0].shape[1], calls[0][0].shape[2], calls[0][1].shape[2]
                if len(calls) == 1 and steps * steps * (width_in + width_out) < 2 * width_in * width_out:
                    a, b = calls[0]
                    norm2 = torch.zeros(n, dtype=b.dtype, device=b.device)
                    if w is not None:
                        norm2 = (
                            (a @ a.transpose(1, 2) * (b @ b.transpose(1, 2))).sum((1, 2))
                            if steps > 1
                            else (a.pow(2).sum((1, 2)) * b.pow(2).sum((1, 2)))
                        )
                    if bias is not None:
                        norm2 = norm2 + b.sum(1).pow(2).sum(1)
                    sq.append(norm2 * factor**2)
                    parts.append(("gram", a, b, factor))
                else:  # per-sample gradients of this layer only, summed over its calls
                    g_w = _total(torch.bmm(b.transpose(1, 2), a) for a, b in calls) if w is not None else None
                    g_b = _total(b.sum(1) for _, b in calls) if bias is not None else None
                    sq.append(_total(_sq_norms(g) for g in (g_w, g_b) if g is not None) * factor**2)
                    parts.append(("sample", g_w, g_b, factor))
            out.append((torch.cat(sq), [layer, w, bias, parts]))
        return out

    def per_sample_norms(self, params: Sequence[Tensor], loss_reduction: str = "mean") -> Tensor:
        """Each row's gradient norm over ``params`` (rows: the samples of every recorded backward pass)."""
        terms = self._terms(params, scale=loss_reduction == "mean")
        if not terms:
            return torch.zeros(0)
        return torch.stack([sq for sq, _ in terms], dim=1).sum(1).sqrt()

    def clipped_sum(self, params: Sequence[Tensor], max_grad_norm: float, loss_reduction: str = "mean") -> list[Tensor]:
        """The sum over all rows of the per-sample gradients clipped to ``max_grad_norm`` (Opacus' factor
        ``min(1, C / (norm + 1e-6))``), one tensor per parameter of ``params`` (zeros for a parameter no backward
        reached), and forget the records."""
        terms = self._terms(params, scale=loss_reduction == "mean")
        sums = {id(p): torch.zeros_like(p) for p in params}
        if terms:
            norms = torch.stack([sq for sq, _ in terms], dim=1).sum(1).sqrt()
            factors = (max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)
            for _, (layer, w, bias, parts) in terms:
                start = 0
                for kind, x, y, factor in parts:
                    rows = len(x) if x is not None else len(y)
                    c = factors[start : start + rows].to(sums[id(w if w is not None else bias)].dtype) * factor
                    start += rows
                    if kind == "gram":  # x: A [n, T, in], y: B [n, T, out]
                        cb = y * c.view(-1, 1, 1)
                        if w is not None:
                            sums[id(w)] += (cb.reshape(-1, cb.shape[-1]).T @ x.reshape(-1, x.shape[-1])).view_as(w)
                        if bias is not None:
                            sums[id(bias)] += cb.sum((0, 1))
                    else:  # x: per-sample weight gradients [n, out, in], y: per-sample bias gradients [n, out]
                        if w is not None:
                            summed = (c @ x.flatten(1)).view(x.shape[1:])
                            sums[id(w)] += conv2d_weight_layout(layer, summed) if kind == "conv" else summed.view_as(w)
                        if bias is not None:
                            sums[id(bias)] += c @ y
        self.reset()
        return [sums[id(p)] for p in params]


def _total(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of a non-empty iterable of tensors (no ``0 +`` copy)."""
    it = iter(tensors)
    out = next(it)
    for t in it:
        out = out + t
    return out


def _sq_norms(g: Tensor) -> Tensor:
    return torch.linalg.vector_norm(g.flatten(1), dim=1).square()
