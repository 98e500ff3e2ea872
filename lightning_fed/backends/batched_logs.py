"""``self.log`` calls of many local batches, handed to Lightning once per Lightning step.

A fused Lightning step covers up to 32 of a worker's local batches (or 32 vectorized steps), and each batch's
``self.log("train_loss", loss, on_epoch=True)`` used to go through Lightning's logger connector on its own: for a
small model that costs more than its step (McMahan's 2NN: 1.7x the unlogged fit). Within :func:`batched_logs`,
``module.log`` records each call instead, and when the block ends every name is logged once, with the value from
which Lightning's epoch reduction reaches the same result as from the single calls:

* ``reduce_fx="mean"`` (the default): the mean of the values, each weighed by the batch size Lightning would have
  used (the ``batch_size`` given; else the batch's size where the value is averaged over the epoch; else 1), logged
  with their sum as ``batch_size``;
* ``"max"``, ``"min"``, ``"sum"``: the max, min or sum of the values.

So the epoch value is unchanged, and the ``on_step`` value of the Lightning step is that merged value (before, the
last batch's). Calls that cannot be merged exactly go to Lightning at once, as before: a torchmetrics ``Metric`` or a
non-scalar value, ``sync_dist=True``, ``enable_graph=True``, another ``reduce_fx``, options passed by position, and a
name logged again with other options (Lightning then raises its own error).

Example:
    >>> import torch
    >>> calls = []
    >>> class Module:
    ...     def log(self, name, value, **kwargs):
    ...         calls.append((name, round(float(value), 4), kwargs))
    >>> module = Module()
    >>> with batched_logs(module) as logs:
    ...     for loss, size in [(1.0, 4), (4.0, 2)]:
    ...         logs.batch = torch.zeros(size, 3)
    ...         module.log("train_loss", torch.tensor(loss), on_epoch=True)
    >>> calls  # (1 * 4 + 4 * 2) / 6
    [('train_loss', 2.0, {'on_epoch': True, 'batch_size': 6})]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor

# Lightning's epoch reductions that one call can carry for many exactly, by the names and functions it accepts
_REDUCTIONS: dict[Any, str] = {"mean": "mean", "avg": "mean", torch.mean: "mean", "max": "max", torch.max: "max",
                               "min": "min", torch.min: "min", "sum": "sum", torch.sum: "sum"}  # fmt: skip
_UNMERGEABLE = ("sync_dist", "enable_graph")


def reduction_of(kwargs: dict[str, Any]) -> str | None:
    """``"mean"``, ``"max"``, ``"min"`` or ``"sum"``: the epoch reduction of a ``self.log`` call with ``kwargs``
    (``None``: another one, which one call cannot carry for many)."""
    reduce = kwargs.get("reduce_fx", "mean")
    try:
        return _REDUCTIONS.get(reduce)
    except TypeError:  # an unhashable reduce_fx
        return None


@contextlib.contextmanager
def shadowed_log(module: Any, log: Callable[..., Any]) -> Iterator[None]:
    """Within the block ``module.log`` is ``log`` (an instance attribute over ``LightningModule.log``); afterwards it
    is what it was, an outer shadow included."""
    saved = vars(module).get("log")
    module.log = log
    try:
        yield
    finally:
        if saved is None:
            vars(module).pop("log", None)
        else:
            module.log = saved


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # options that do not compare (a tensor): not the same
        return False


@dataclass
class _Pending:
    kwargs: dict[str, Any]
    reduce: str
    values: list[Tensor] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)


class LogBatcher:
    """Stands in for ``module.log`` in :func:`batched_logs`; ``batch`` is the local batch being trained (the batch size
    Lightning would extract for a mean over the epoch comes from it)."""

    def __init__(self, log: Callable[..., Any]) -> None:
        self._log = log
        self._pending: dict[str, _Pending] = {}
        self._batch: Any = None
        self._batch_size: int | None = None

    @property
    def batch(self) -> Any:
        return self._batch

    @batch.setter
    def batch(self, batch: Any) -> None:
        self._batch, self._batch_size = batch, None

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        reduce = None if args or any(kwargs.get(k) for k in _UNMERGEABLE) else reduction_of(kwargs)
        if isinstance(value, Tensor):
            scalar = value.numel() == 1
        else:
            scalar = isinstance(value, (int, float)) and not isinstance(value, bool)
        options = {k: v for k, v in kwargs.items() if k != "batch_size"}
        pending = self._pending.get(name)
        if reduce is None or not scalar or (pending is not None and not _same(pending.kwargs, options)):
            self.flush(name)
            return self._log(name, value, *args, **kwargs)  # as before: Lightning takes (or refuses) it at once
        if pending is None:
            pending = self._pending[name] = _Pending(options, reduce)
        tensor = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
        pending.values.append(tensor.reshape(()))
        pending.weights.append(self._weight(kwargs, reduce))
        return None

    def _weight(self, kwargs: dict[str, Any], reduce: str) -> int:
        """The batch size Lightning would weigh this value by in an epoch mean (1 where it weighs none)."""
        given = kwargs.get("batch_size")
        if given is not None:
            return int(given)
        # Lightning's default in training_step is on_epoch=False; only an epoch mean weighs by the batch's size
        if reduce != "mean" or not kwargs.get("on_epoch") or self._batch is None:
            return 1
        if self._batch_size is None:
            self._batch_size = extract_batch_size(self._batch)
        return self._batch_size

    def flush(self, name: str | None = None) -> None:
        """Log the merged value of ``name`` (of every name recorded, when ``None``) to Lightning."""
        names = list(self._pending) if name is None else [name] if name in self._pending else []
        for key in names:
            pending = self._pending.pop(key)
            first = pending.values[0]
            wide = torch.float32 if first.device.type == "mps" else torch.float64  # MPS has no float64
            values = torch.stack([v.to(first.device, wide) for v in pending.values])
            kwargs = dict(pending.kwargs)
            if pending.reduce == "mean":
                weights = torch.tensor(pending.weights, dtype=wide, device=values.device)
                merged = (values * weights).sum() / weights.sum()
                kwargs["batch_size"] = sum(pending.weights)
            else:  # Lightning weighs no max, min or sum by batch size
                merged = getattr(values, pending.reduce)()
            dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
            self._log(key, merged.to(dtype), **kwargs)


@contextlib.contextmanager
def batched_logs(module: Any) -> Iterator[LogBatcher]:
    """Within the block, ``module.log`` records; at its end each name is logged to ``module.log`` once (see the module
    docstring). Set the yielded batcher's ``batch`` to each local batch before its ``training_step``."""
    batcher = LogBatcher(module.log)
    with shadowed_log(module, batcher):
        try:
            yield batcher
        except BaseException:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                batcher.flush()
            raise
    batcher.flush()
