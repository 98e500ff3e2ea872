"""The pieces of vectorized training that are plain functions: stacking batches, calling ``training_step`` under
``functional_call``, recording ``self.log`` under ``vmap``, clipping per worker.

Example:
    >>> import torch
    >>> [t.shape for t in stack_batches([[torch.zeros(2, 3), torch.zeros(2)], [torch.ones(2, 3), torch.ones(2)]])]
    [torch.Size([2, 2, 3]), torch.Size([2, 2])]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fed.backends.batched_logs import shadowed_log
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.rounds.module_state import is_metric


class TrainingStepCall(nn.Module):
    """``forward`` calls the LightningModule's ``training_step`` (so ``functional_call`` can swap its parameters)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: Any, batch_idx: int) -> Any:
        return self.module.training_step(batch, batch_idx)


def loss_of(output: Any) -> Tensor:
    loss = output.get("loss") if isinstance(output, dict) else output
    if not isinstance(loss, Tensor):
        raise FederatedConfigError(
            f"`vectorize=True` needs training_step to return a loss tensor (or a dict with 'loss'), got {output!r}: "
            "skipping batches by returning None is not supported; pass vectorize=False."
        )
    return loss


def is_vmap_error(err: BaseException) -> bool:
    text = str(err).lower()
    words = ("vmap", "batchedtensor", "functorch", "batching rule")
    return isinstance(err, MetricUnderVmap) or any(word in text for word in words)


@dataclass
class LogCall:
    name: str
    kwargs: dict[str, Any]


class LogRecorder:
    """Stands in for ``LightningModule.log`` under vmap: records names and values, logs them per worker after."""

    def __init__(self) -> None:
        self.calls: list[LogCall] = []
        self.values: list[Tensor] = []

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            raise FederatedConfigError("`vectorize=True`: pass self.log options by keyword.")
        if is_metric(value):
            raise FederatedConfigError(
                f"`vectorize=True`: self.log({name!r}, <{type(value).__name__}>) logs a torchmetrics Metric object, "
                "whose state updates in place and cannot be batched over workers. Make the metric an attribute of your "
                "LightningModule (then vectorized workers detect it before the first round and run their forward "
                "passes one after another), or pass vectorize=False."
            )
        self.calls.append(LogCall(name, kwargs))
        self.values.append(torch.as_tensor(value).detach() if not isinstance(value, Tensor) else value.detach())


@contextlib.contextmanager
def patched_log(module: Any, recorder: LogRecorder) -> Iterator[None]:
    with shadowed_log(module, recorder):  # an instance attribute shadows LightningModule.log (and log_dict)
        yield


class MetricUnderVmap(RuntimeError):
    """A torchmetrics metric was about to update its state inside the vmapped ``training_step`` (stopped before it
    changed anything); the message names vmap, so the backend falls back to loop mode."""


def _under_vmap(name: str) -> Exception:
    return MetricUnderVmap(
        f"torchmetrics metric {name!r} updates its state in place, which torch.vmap cannot batch over workers"
    )


def metric_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The torchmetrics metrics among ``module``'s submodules, with their names (``"<root>"`` for ``module``)."""
    return [(name or "<root>", sub) for name, sub in module.named_modules() if is_metric(sub)]


@contextlib.contextmanager
def guarded_metrics(
    module: nn.Module,
    error: Callable[[str], Exception] = _under_vmap,
    metrics: list[tuple[str, nn.Module]] | None = None,
) -> Iterator[None]:
    """Within the block, calling or updating any torchmetrics metric of ``module`` raises ``error(its name)`` (default
    :class:`MetricUnderVmap`) before the metric changes: its state updates in place and cannot be batched over
    workers under ``vmap`` (nor updated from several threads at once). ``metrics``: :func:`metric_modules` of
    ``module``, found once by a caller that guards at every step."""
    saved = []
    for name, sub in metric_modules(module) if metrics is None else metrics:

        def refuse(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            raise error(_name)

        saved.append((sub, vars(sub).get("forward"), vars(sub).get("update")))
        sub.forward = refuse
        sub.update = refuse
    try:
        yield
    finally:
        for sub, forward, update in saved:
            for attr, value in (("forward", forward), ("update", update)):
                if value is None:
                    vars(sub).pop(attr, None)
                else:
                    setattr(sub, attr, value)


def tied_names(module: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Each of ``names`` (parameters of ``module``) with every name under which ``module`` holds the same tensor:
    found once, so that ``functional_call(..., tie_weights=False)`` at every step swaps tied weights together.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)); net[1].weight = net[0].weight
        >>> tied_names(net, ["0.weight", "0.bias"])
        {'0.weight': ['0.weight', '1.weight'], '0.bias': ['0.bias']}
    """
    aliases: dict[int, list[str]] = {}  # one list per tensor, shared by all its names
    of_name: dict[str, list[str]] = {}
    for name, tensor in module.named_parameters(remove_duplicate=False):
        of_name[name] = aliases.setdefault(id(tensor), [])
        of_name[name].append(name)
    return {name: of_name[name] for name in names}


@contextlib.contextmanager
def sized_log(module: Any, batch_size: int) -> Iterator[None]:
    """Within the block ``module.log`` gets ``batch_size`` unless given (loop mode: Lightning's batch is the whole
    vectorized step, from which it cannot infer one worker's batch size); ``batch_size=None``, which ``log_dict``
    passes, is not given."""
    log = module.log

    def with_size(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("batch_size") is None:
            kwargs["batch_size"] = batch_size
        return log(*args, **kwargs)

    with shadowed_log(module, with_size):
        yield


def is_dense(t: Tensor) -> bool:
    """Whether ``t``'s strides are a permutation of a contiguous layout (no gaps, no overlaps)."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d))
    expected = 1
    for d in order:
        if t.size(d) != 1 and t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def like_layout(value: Tensor, layout: Tensor) -> Tensor:
    out = torch.empty_strided(layout.shape, layout.stride(), dtype=value.dtype, device=value.device)
    return out.copy_(value)


def leaves(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [leaf for item in batch for leaf in leaves(item)]
    if isinstance(batch, dict):
        return [leaf for key in sorted(batch, key=str) for leaf in leaves(batch[key])]
    return []


def shapes(batch: Any) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in leaves(batch))


def stack_batches(batches: list[Any]) -> Any:
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(batches)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(stack_batches(list(items)) for items in zip(*batches)))
    if isinstance(first, (list, tuple)):
        return type(first)(stack_batches(list(items)) for items in zip(*batches))
    if isinstance(first, dict):
        return {key: stack_batches([b[key] for b in batches]) for key in first}
    raise FederatedConfigError(
        f"`vectorize=True` stacks batches of tensors (in tuples, lists or dicts), got {type(first).__name__}: pass "
        "vectorize=False."
    )


def leading_size(batch: Any) -> int:
    found = leaves(batch)
    return int(found[0].shape[0]) if found and found[0].dim() > 0 else 1


def clip_per_worker(grads: list[Tensor], clip_val: float, algorithm: str) -> None:
    """Lightning's gradient clipping, for each worker's slice on its own (norm: total L2 norm over its tensors)."""
    with torch.no_grad():
        if algorithm == "value":
            torch._foreach_clamp_min_(grads, -clip_val)
            torch._foreach_clamp_max_(grads, clip_val)
            return
        k = grads[0].shape[0]
        norms = torch.stack([g.reshape(k, -1).double().pow(2).sum(1) for g in grads]).sum(0).sqrt()
        coef = (clip_val / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype).view(k, *([1] * (g.dim() - 1))))
