"""Privacy accounting with Opacus' accountants (RDP or PRV), behind a small adapter that imports Opacus lazily.

:class:`PrivacyAccountant` keeps the history Opacus' accountants keep, ``[(noise_multiplier, sample_rate, steps)]``
with runs of equal steps merged, in plain Python, so it can be stepped, saved and restored without Opacus; the
epsilon is Opacus' own, computed from that history. Its ``state_dict()`` is Opacus' format (``history`` and
``mechanism``): ``opacus.accountants.RDPAccountant().load_state_dict(acc.state_dict())`` works.

Client level steps once a round with ``sample_rate = clients_per_round / num_workers``; sample level steps each
worker's accountant once per optimizer step with ``sample_rate = batch_size / shard_size``. Opacus' analyses assume
Poisson sampling; uniform sampling of a fixed number of clients is accounted as if Poisson with the same rate (the
usual DP-FedAvg approximation, as in McMahan et al. 2018).

Example:
    >>> acc = PrivacyAccountant("rdp")
    >>> for _ in range(3):
    ...     acc.step(noise_multiplier=1.0, sample_rate=0.1)
    >>> acc.step(noise_multiplier=2.0, sample_rate=0.1)
    >>> acc.history, acc.steps
    ([(1.0, 0.1, 3), (2.0, 0.1, 1)], 4)
    >>> restored = PrivacyAccountant("rdp")
    >>> restored.load_state_dict(acc.state_dict())
    >>> restored.history == acc.history
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from lightning_fed.exceptions import FederatedConfigError, LightningFedError

_INSTALL = "pip install 'lightning-fed[privacy]'"


class OpacusNotInstalledError(LightningFedError, ImportError):
    """Differential privacy needs Opacus, an optional extra."""


def require_opacus(what: str = "differential privacy") -> Any:
    """Import and return ``opacus``, or raise :class:`OpacusNotInstalledError` naming the extra to install."""
    try:
        return importlib.import_module("opacus")
    except ImportError as err:
        raise OpacusNotInstalledError(
            f"{what} in lightning_fed uses Opacus, which is not installed: run `{_INSTALL}` (or `pip install opacus`)."
        ) from err


def _check_mechanism(mechanism: str) -> str:
    if mechanism not in ("rdp", "prv"):
        raise FederatedConfigError(
            f"`accountant={mechanism!r}` is not valid: choose 'rdp' or 'prv' (Opacus' accountants)."
        )
    return mechanism


def opacus_accountant(mechanism: str, history: Iterable[tuple[float, float, int]] = ()) -> Any:
    """A fresh Opacus accountant (``RDPAccountant`` or ``PRVAccountant``) holding ``history``."""
    require_opacus("privacy accounting")
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=_check_mechanism(mechanism))
    accountant.history = [tuple(h) for h in history]
    return accountant


class PrivacyAccountant:
    """An Opacus accountant's history, stepped here, with Opacus computing epsilon (see the module docstring).

    Args:
        mechanism: ``"rdp"`` (Rényi DP, Mironov 2017) or ``"prv"`` (privacy random variables, Gopi et al. 2021).
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        self.mechanism = _check_mechanism(mechanism)
        self.history: list[tuple[float, float, int]] = []
        self._cache: dict[tuple[Any, ...], float] = {}

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Record ``num_steps`` steps of the subsampled Gaussian mechanism (merged with an equal last entry)."""
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
        if num_steps < 1:
            return
        z, q = float(noise_multiplier), float(sample_rate)
        if self.history and self.history[-1][:2] == (z, q):
            self.history[-1] = (z, q, self.history[-1][2] + num_steps)
        else:
            self.history.append((z, q, int(num_steps)))

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return sum(h[2] for h in self.history)

    def epsilon(self, delta: float, **kwargs: Any) -> float:
        """The epsilon spent so far for ``delta``, by Opacus' accountant on this history (0 before any step)."""
        return self.epsilon_of(self.history, delta, **kwargs)

    def epsilon_after(
        self, delta: float, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1, **kwargs: Any
    ) -> float:
        """The epsilon this history would reach after ``num_steps`` more steps (the history is left unchanged)."""
        future = PrivacyAccountant(self.mechanism)
        future.history = list(self.history)
        future.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, num_steps=num_steps)
        return self.epsilon_of(future.history, delta, **kwargs)

    def max_steps(
        self, delta: float, target_epsilon: float, *, noise_multiplier: float, sample_rate: float, limit: int = 10**8
    ) -> int:
        """The most steps at (``noise_multiplier``, ``sample_rate``) this history can still take without passing
        ``target_epsilon`` (at most ``limit``): an exponential then a binary search, about ``2 log2(n)`` epsilons."""

        def fits(n: int) -> bool:
            eps = self.epsilon_after(delta, noise_multiplier=noise_multiplier, sample_rate=sample_rate, num_steps=n)
            return eps <= target_epsilon

        if not fits(1):
            return 0
        low, high = 1, 2
        while True:
            if high >= limit:
                if fits(limit):
                    return limit
                high = limit
                break
            if not fits(high):
                break
            low, high = high, high * 2
        while high - low > 1:  # fits(low), not fits(high)
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low

    def epsilon_of(self, history: list[tuple[float, float, int]], delta: float, **kwargs: Any) -> float:
        """Opacus' epsilon for any ``history`` with this mechanism (cached)."""
        if not history:
            return 0.0
        key = (tuple(history), float(delta), tuple(sorted(kwargs.items())))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = float(opacus_accountant(self.mechanism, history).get_epsilon(delta=delta, **kwargs))
        return self._cache[key]

    def state_dict(self) -> dict[str, Any]:
        """Opacus' accountant state format: ``{"history": [...], "mechanism": "rdp"|"prv"}``."""
        return {"history": [tuple(h) for h in self.history], "mechanism": self.mechanism}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mechanism = state.get("mechanism")
        if mechanism != self.mechanism:
            raise FederatedConfigError(
                f"The checkpoint's privacy accountant is {mechanism!r} but this run uses `accountant="
                f"{self.mechanism!r}`: resume with the same accountant, or start a new run."
            )
        self.history = [(float(z), float(q), int(n)) for z, q, n in state.get("history", [])]

    def __repr__(self) -> str:
        return f"PrivacyAccountant({self.mechanism!r}, steps={self.steps})"


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps at ``sample_rate`` (Opacus'
    ``get_noise_multiplier``, as ``make_private_with_epsilon`` uses it)."""
    require_opacus("calibrating the noise multiplier")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=_check_mechanism(accountant),
            )
        )
    except ValueError as err:
        raise FederatedConfigError(
            f"`target_epsilon={target_epsilon!r}` cannot be reached at delta={delta!r} with {steps} steps at "
            f"sample_rate={sample_rate:.4g} ({err}): raise target_epsilon or lower num_rounds."
        ) from err
