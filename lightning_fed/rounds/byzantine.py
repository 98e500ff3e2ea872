"""Byzantine workers: a simulation for tests and studies that transforms the named workers' updates (scaled,
sign-flipped, or any function) where the round applies the aggregator's ``worker_update``, before aggregation.

Example:
    >>> import torch
    >>> ByzantineWorkers({"w1": "scale:2"})("w1", [torch.tensor([1.0])])
    [tensor([2.])]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from lightning_fed.aggregation.functional import is_float
from lightning_fed.exceptions import FederatedConfigError

Attack = Union[str, tuple[str, float], Callable[[list[Tensor]], list[Tensor]]]  # noqa: UP007 (a runtime alias, py3.10)


def _parse_attack(worker_id: Hashable, attack: Attack) -> Callable[[Any], Any]:
    """An attack as a function: of one tensor for 'scale' and 'sign_flip', of the whole update for a callable."""
    if callable(attack):
        return attack
    kind, factor = attack, None
    if isinstance(attack, str) and ":" in attack:
        kind, _, text = attack.partition(":")
        try:
            factor = float(text)
        except ValueError:
            factor = math.nan
    elif isinstance(attack, tuple) and len(attack) == 2 and isinstance(attack[0], str):
        kind, factor = attack
    if kind not in ("scale", "sign_flip") or (factor is not None and not isinstance(factor, (int, float))):
        raise FederatedConfigError(
            f"Byzantine attack {attack!r} for worker {worker_id!r} is not valid: pass 'scale:<factor>', "
            "'sign_flip' (or 'sign_flip:<factor>'), a tuple such as ('scale', 100.0), or a function of the update."
        )
    if factor is None:
        if kind == "scale":
            raise FederatedConfigError(
                f"Byzantine attack {attack!r} for worker {worker_id!r} needs a factor: 'scale:100' or ('scale', 100.0)."
            )
        factor = 1.0
    if not math.isfinite(float(factor)):
        raise FederatedConfigError(
            f"Byzantine attack {attack!r} for worker {worker_id!r} needs a finite number as its factor."
        )
    scale = float(factor) if kind == "scale" else -float(factor)
    return lambda t: t * scale


class ByzantineWorkers:
    """Transforms the named workers' updates before aggregation: a simulation of Byzantine clients.

    Each entry maps a worker id to an attack: ``"scale:100"`` or ``("scale", 100.0)`` multiplies its update
    (``local - global``) by 100, ``"sign_flip"`` / ``("sign_flip", s)`` by ``-s``, and a function
    ``f(update: list[Tensor]) -> list[Tensor]`` does anything. The strategy applies it right after the aggregator's
    ``worker_update``; scale and sign flip leave integer buffers (``num_batches_tracked``) alone.

    Example:
        >>> import torch
        >>> byz = ByzantineWorkers({"w3": "scale:100", "w4": ("sign_flip", 1.0)})
        >>> byz("w3", [torch.tensor([0.5]), torch.tensor([1.0])], reference=[torch.zeros(1), torch.zeros(1).long()])
        [tensor([50.]), tensor([1.])]
        >>> byz("w4", [torch.tensor([0.5])]), byz("w0", [torch.tensor([0.5])])
        ([tensor([-0.5000])], [tensor([0.5000])])
    """

    def __init__(self, attacks: Mapping[Hashable, Attack]) -> None:
        if not isinstance(attacks, Mapping):
            raise FederatedConfigError(
                f"`byzantine={attacks!r}` is not valid: pass a dict such as {{'w3': 'scale:100'}} or ByzantineWorkers."
            )
        self.attacks = dict(attacks)
        self._transforms = {worker_id: _parse_attack(worker_id, a) for worker_id, a in self.attacks.items()}
        self._elementwise = {worker_id: not callable(a) for worker_id, a in self.attacks.items()}

    @classmethod
    def coerce(cls, value: ByzantineWorkers | Mapping[Hashable, Attack] | None) -> ByzantineWorkers | None:
        """``None`` or an empty dict -> ``None``; a dict -> ``ByzantineWorkers(dict)``; an instance as is."""
        if value is None or isinstance(value, ByzantineWorkers):
            return value
        return cls(value) if value else None

    def check_workers(self, worker_ids: Iterable[Hashable]) -> None:
        """Refuse attacks on workers the federation does not have (a typo would silently attack nobody)."""
        known = set(worker_ids)
        unknown = [worker_id for worker_id in self.attacks if worker_id not in known]
        if unknown:
            raise FederatedConfigError(
                f"`byzantine` names workers the federation does not have: {unknown}; its workers are "
                f"{sorted(map(str, known))}."
            )

    def __call__(
        self, worker_id: Hashable, update: list[Tensor], reference: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        transform = self._transforms.get(worker_id)
        if transform is None:
            return update
        with torch.no_grad():
            if not self._elementwise[worker_id]:
                return list(transform(list(update)))  # type: ignore[arg-type]
            return [
                transform(u) if reference is None or is_float(ref) else u  # type: ignore[arg-type]
                for u, ref in zip(update, reference if reference is not None else update)
            ]

    def __repr__(self) -> str:
        return f"ByzantineWorkers({self.attacks!r})"
