"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): adaptive server optimizers.

The round's sample-weighted mean update ``delta`` (summed first, divided at the end, as in FedAvg) is the negated
pseudo-gradient. Per floating tensor the server keeps ``m`` and ``v``::

    m = beta1 * m + (1 - beta1) * delta
    v = second_moment(v, delta**2)                # Adagrad, Adam or Yogi: the subclasses
    x = x + server_lr * m / (sqrt(v) + tau)

without bias correction, as in the paper. ``m`` starts at 0 and ``v`` at ``initial_accumulator`` (0 by default, as
in Flower; the paper's ``v_{-1} >= tau**2`` is ``initial_accumulator=tau**2``). Only parameters take the server step:
buffers (BatchNorm's running statistics, which a sign-like adaptive step could push negative, and the integer
``num_batches_tracked``) take the weighted mean.
``m`` and ``v`` are saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.aggregation.functional import apply_update, fedopt_step
from lightning_fed.exceptions import FederatedConfigError


def _check(name: str, arg: str, value: Any, low: float, high: float | None, closed_low: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (value >= low if closed_low else value > low) and (high is None or value < high)
    if not ok:
        bounds = f"{'[' if closed_low else '('}{low}, {high if high is not None else 'inf'})"
        raise FederatedConfigError(f"{name} `{arg}={value!r}` is not valid: pass a number in {bounds}.")
    return float(value)


class FedOpt(FedAvg):
    """The server-optimizer base: FedAvg's weighted mean update fed to an adaptive step (see the module docstring).

    Subclasses set ``second_moment`` (a function ``(v, delta**2, beta2) -> v``).

    Args:
        server_lr: the server learning rate ``eta`` (> 0).
        beta1: first-moment decay, in [0, 1).
        beta2: second-moment decay, in [0, 1) (unused by FedAdagrad).
        tau: the adaptivity ``tau`` (> 0), added to ``sqrt(v)``.
        initial_accumulator: the starting value of ``v`` (>= 0).

    Example:
        >>> import torch
        >>> from lightning_fed.aggregation.functional import adam_second_moment
        >>> class MyAdam(FedOpt):
        ...     second_moment = staticmethod(adam_second_moment)
        >>> agg = MyAdam(server_lr=0.5, beta1=0.0, beta2=0.0, tau=1e-9)
        >>> agg.begin_round([torch.zeros(2)])
        >>> agg.accumulate([torch.tensor([4.0, -2.0])], weight=1, worker_id="a")
        >>> agg.finalize([torch.zeros(2)])  # beta1 = beta2 = 0: a signed step of size server_lr
        [tensor([ 0.5000, -0.5000])]
    """

    name = "fedopt"
    reads_update_once = True  # worker_update and accumulate keep no reference to the update
    second_moment: ClassVar[Callable[[Tensor, Tensor, float], Tensor]]

    def __init__(
        self,
        server_lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-9,
        initial_accumulator: float = 0.0,
    ) -> None:
        super().__init__()
        kind = type(self).__name__
        self.server_lr = _check(kind, "server_lr", server_lr, 0.0, None, closed_low=False)
        self.beta1 = _check(kind, "beta1", beta1, 0.0, 1.0)
        self.beta2 = _check(kind, "beta2", beta2, 0.0, 1.0)
        self.tau = _check(kind, "tau", tau, 0.0, None, closed_low=False)
        self.initial_accumulator = _check(kind, "initial_accumulator", initial_accumulator, 0.0, None)
        self._m: list[Tensor | None] | None = None
        self._v: list[Tensor | None] | None = None

    @override
    def apply(self, global_tensors: Sequence[Tensor], mean_delta: list[Tensor]) -> list[Tensor]:
        if self._m is None or self._v is None:
            floating = [self.is_param(i, g) for i, g in enumerate(global_tensors)]
            self._m = [torch.zeros_like(d) if f else None for d, f in zip(mean_delta, floating)]
            start = self.initial_accumulator
            self._v = [torch.full_like(d, start) if f else None for d, f in zip(mean_delta, floating)]
        steps = []
        for i, delta in enumerate(mean_delta):
            m, v = self._m[i], self._v[i]
            if m is None or v is None:  # buffers: the weighted mean
                steps.append(delta)
                continue
            step, self._m[i], self._v[i] = fedopt_step(
                delta,
                m.to(delta.device),
                v.to(delta.device),
                type(self).second_moment,
                lr=self.server_lr,
                beta1=self.beta1,
                beta2=self.beta2,
                tau=self.tau,
            )
            steps.append(step)
        return apply_update(global_tensors, steps)

    @override
    def state_dict(self) -> dict[str, Any]:
        def copy(values: list[Tensor | None] | None) -> list[Tensor | None] | None:
            return None if values is None else [None if t is None else t.clone() for t in values]

        return {"m": copy(self._m), "v": copy(self._v)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        m, v = state.get("m"), state.get("v")
        self._m = None if m is None else [None if t is None else t.clone() for t in m]
        self._v = None if v is None else [None if t is None else t.clone() for t in v]

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(server_lr={self.server_lr}, beta1={self.beta1}, beta2={self.beta2}, "
            f"tau={self.tau}, initial_accumulator={self.initial_accumulator})"
        )
