"""``SecureAggregator``: a weighted-sum aggregator whose sum is taken by secure aggregation.

It wraps an inner :class:`~lightning_fed.aggregation.Aggregator` (FedAvg, FedAvgM, FedProx, FedAdam...): the
worker-side hooks (``worker_start``, ``adjust_gradients``, ``worker_update``) go to the inner aggregator unchanged;
``accumulate(update, weight, worker_id)`` does the worker's part of the protocol (``weight * update`` flattened to one
float64 vector, clipped, quantized with the worker's seeded rounding, masked with the worker's secrets) and hands the
server only the masked int64 vector, which it adds into its running ring sum; ``finalize`` unmasks the sum of the
workers that sent (rebuilding the masks of those that dropped out after sharing), dequantizes it and lets the inner
aggregator turn ``(sums, total_weight)`` into the new global model. No object on the server side holds an individual
update in the clear, masked or not: only the running sum.

Participants: the round's workers must be known before its first update, since keys and shares are exchanged at
``begin_round``. Pass them with ``set_participants(ids)`` before ``begin_round(global)`` or as
``begin_round(global, participants=ids)``; without either, every worker named in ``setup(worker_ids)`` takes part
(right for full participation). A participant that fails before sending is *dropped* (``drop(worker_id)``, or simply
never sends); up to ``n - t`` dropouts are recovered, more raise
:class:`~lightning_fed.secure_aggregation.SecureAggregationError` at ``finalize``.

The sample weights stay public (the server needs ``total_weight``, and the strategy already knows each worker's sample
count). In this one-process simulation the workers' parts run inside ``accumulate``, on the CPU (:func:`worker_input`,
then the client's mask). With remote sites a backend sets :attr:`SecureAggregator.round_factory` (see
:mod:`.remote`): each site runs :func:`worker_input` and its mask at home, and ``accumulate`` only confirms the masked
vector its site already sent (the ``update`` the server passes is not read: it holds no site's model).

Example:
    >>> import torch
    >>> from lightning_fed.aggregation import FedAvg
    >>> agg = SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0))
    >>> agg.begin_round([torch.zeros(2)], participants=["a", "b", "c"])
    >>> agg.accumulate([torch.tensor([1.0, 1.0])], weight=1, worker_id="a")
    >>> agg.accumulate([torch.tensor([3.0, 5.0])], weight=3, worker_id="b")
    >>> agg.drop("c")
    >>> agg.finalize([torch.zeros(2)])  # FedAvg: (1 * [1, 1] + 3 * [3, 5]) / 4
    [tensor([2.5000, 4.0000])]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.aggregation.functional import accumulation_dtype, mean_update
from lightning_fed.aggregation.wrapper import AggregatorWrapper
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.secure_aggregation.config import SecureAggregationConfig
from lightning_fed.secure_aggregation.distributed import DistributedSecureAggregationRound
from lightning_fed.secure_aggregation.protocol import SecureAggregationRound
from lightning_fed.secure_aggregation.quantization import check_overflow, count_clipped, dequantize, quantize

if TYPE_CHECKING:
    from lightning_fed.collective import Collective

Finalizer = Callable[[Sequence[Tensor], list[Tensor], float], list[Tensor]]
RoundFactory = Callable[[list[Hashable], int, SecureAggregationConfig, int], SecureAggregationRound]


def flatten_update(update: Sequence[Tensor], dtypes: Sequence[torch.dtype]) -> Tensor:
    """An update as one CPU vector: each tensor in its accumulation dtype (complex ones as real pairs), in order."""
    if len(update) != len(dtypes):
        raise LightningFedError(f"an update has {len(update)} tensors, the model {len(dtypes)}.")
    parts = []
    for u, dtype in zip(update, dtypes):
        v = u.detach().to("cpu", dtype)
        parts.append((torch.view_as_real(v) if dtype.is_complex else v).reshape(-1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def worker_input(update: Sequence[Tensor], weight: float, dtypes: Sequence[torch.dtype],
                 config: SecureAggregationConfig, generator: torch.Generator,
                 worker_id: Hashable) -> tuple[Tensor, int]:  # fmt: skip
    """A worker's part of a round before masking: ``weight * update`` flattened, clipped to ``[-clip, clip]`` and
    quantized with the worker's own rounding ``generator``; returns the ring vector and how many coordinates were
    clipped. The same function runs in simulation and at a remote site (so both give the same vector).

    Example:
        >>> config = SecureAggregationConfig(clip=2.0, fractional_bits=1, rounding="nearest")
        >>> q, clipped = worker_input([torch.tensor([0.5, -3.0])], 2, [torch.float64], config, torch.Generator(), "a")
        >>> q.tolist(), clipped  # 2 * [0.5, -3.0] = [1.0, -6.0], clipped to [1.0, -2.0], scaled by 2**1
        ([2, -4], 1)
    """
    x = flatten_update(update, dtypes) * float(weight)
    if not bool(torch.isfinite(x).all()):  # NaN would quantize to the ring's most negative value, silently
        raise LightningFedError(
            f"worker {worker_id!r}'s update (times its weight {weight}) is not finite (NaN or inf): secure "
            "aggregation cannot quantize it. Leave the worker out of the round (drop(worker_id)) or fix its "
            "training."
        )
    clipped = count_clipped(x, config.clip)
    q = quantize(x, clip=config.clip, fractional_bits=config.fractional_bits, bits=config.bits,
                 rounding=config.rounding, generator=generator)  # fmt: skip
    return q, clipped


def _owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines ``name``."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _finalizer(inner: Aggregator) -> Finalizer:
    """How ``inner`` finishes a round from ``(global, sums, total_weight)``; raises if it cannot."""
    cls = type(inner)
    name = getattr(inner, "name", cls.__name__)
    if not inner.is_sum:
        raise FederatedConfigError(
            f"secure_aggregation=True cannot be combined with aggregation={name!r} ({cls.__name__} is not a weighted "
            "sum: secure aggregation reveals only the sum of the updates, and this rule needs each update). Choose a "
            "sum aggregator such as 'fedavg', 'fedavgm', 'fedprox' or 'fedadam', or set secure_aggregation=False."
        )
    own = _owner(cls, "finalize_from_sum")
    if own is not None and issubclass(own, _owner(cls, "accumulate")) and issubclass(own, _owner(cls, "finalize")):
        return inner.finalize_from_sum  # type: ignore[attr-defined]
    if isinstance(inner, FedAvg) and _owner(cls, "accumulate") is FedAvg and _owner(cls, "finalize") is FedAvg:
        return lambda global_tensors, sums, total: inner.apply(global_tensors, mean_update(sums, total))
    raise FederatedConfigError(
        f"secure_aggregation=True cannot wrap aggregation={name!r}: {cls.__name__} keeps state beside the weighted "
        "sum in accumulate()/finalize() (as SCAFFOLD's control variates), which secure aggregation bypasses. Give "
        "it a method finalize_from_sum(global_tensors, sums, total_weight) -> list[Tensor] that finishes a round "
        "from the weighted sum of updates alone, or set secure_aggregation=False."
    )


class SecureAggregator(AggregatorWrapper):
    """Secure aggregation around a weighted-sum aggregator (see the module docstring).

    Args:
        inner: the aggregator that turns the round's weighted sum into the new global model (``is_sum`` true).
        config: quantization, ring and threshold settings (default :class:`SecureAggregationConfig`).
    """

    is_sum = True
    name = "secure"
    resumable_mid_round = False  # the open round is a live key-agreement protocol: its secrets are not saved

    def __init__(self, inner: Aggregator, config: SecureAggregationConfig | None = None) -> None:
        if not isinstance(inner, Aggregator) or isinstance(inner, SecureAggregator):
            raise FederatedConfigError(
                f"SecureAggregator needs an Aggregator to wrap (not a SecureAggregator), got {inner!r}: e.g. "
                "SecureAggregator(FedAvg())."
            )
        if config is not None and not isinstance(config, SecureAggregationConfig):
            raise FederatedConfigError(
                f"`config={config!r}` is not valid: pass a SecureAggregationConfig(threshold=..., bits=..., clip=...)."
            )
        self._finish = _finalizer(inner)  # refuses non-sum aggregators, naming both settings
        super().__init__(inner)
        self.config = config if config is not None else SecureAggregationConfig()
        self._worker_ids: list[Hashable] | None = None
        self._next: list[Hashable] | None = None
        self._round: SecureAggregationRound | None = None  # or its DistributedSecureAggregationRound subclass
        self._collective: Collective | None = None  # several processes: each holds its own workers' clients
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        self._weights: dict[Hashable, float] = {}
        self._round_index = 0
        self._clipped = 0
        self.last_round_clipped = 0  # coordinates clipped to [-clip, clip] over all updates of the last round
        self.round_factory: RoundFactory | None = None  # how a round's protocol is made, when not in this process

    # -- round set-up ---------------------------------------------------------------------------------------------
    @override
    def setup(self, worker_ids: Sequence[Hashable]) -> None:
        self.inner.setup(worker_ids)
        self._worker_ids = list(worker_ids)

    @override
    def check_num_clients(self, num_clients: int) -> None:
        self.inner.check_num_clients(num_clients)
        self.config.threshold_for(num_clients)
        check_overflow(num_clients, self.config.clip, self.config.fractional_bits, self.config.bits)

    def set_participants(self, worker_ids: Sequence[Hashable]) -> None:
        """The workers taking part in the next round (call before :meth:`begin_round`)."""
        self._next = list(worker_ids)

    @override
    def begin_round(self, global_tensors: Sequence[Tensor], participants: Sequence[Hashable] | None = None) -> None:
        ids = list(participants) if participants is not None else self._next or self._worker_ids
        if not ids:
            raise LightningFedError(
                "SecureAggregator does not know this round's participants: call set_participants(ids) before "
                "begin_round(global), pass begin_round(global, participants=ids), or setup(worker_ids) for all."
            )
        self.inner.begin_round(global_tensors)
        self._layout = [(t.shape, accumulation_dtype(t.dtype), t.device) for t in global_tensors]
        numel = sum(
            t.numel() * (2 if dtype.is_complex else 1) for t, (_, dtype, _) in zip(global_tensors, self._layout)
        )
        if self.round_factory is not None:  # set by a backend whose workers are remote sites
            self._round = self.round_factory(ids, numel, self.config, self._round_index)
        elif self._collective is not None and self._collective.world_size > 1:
            self._round = DistributedSecureAggregationRound(
                ids, numel, self.config, round_index=self._round_index, collective=self._collective
            )
        else:
            self._round = SecureAggregationRound(ids, numel, self.config, round_index=self._round_index)
        self._round_index += 1
        self._next = None
        self._weights = {}
        self._clipped = 0

    # the worker side (worker_start, adjust_gradients, worker_update) is the inner aggregator's, via the wrapper

    # -- one worker's masked input --------------------------------------------------------------------------------
    @override
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        protocol = self._require_round("accumulate")
        if getattr(protocol, "masks_at_sites", False):  # a RemoteSecureAggregationRound: the site masked already
            self._clipped += protocol.accept(worker_id, float(weight))  # ``update`` is the server's (zero) delta
            self._weights[worker_id] = float(weight)
            return
        client = protocol.client(worker_id)
        # the worker's part: weight * update, clipped and quantized with its own rounding, masked with its secrets
        q, clipped = worker_input(update, weight, [dtype for _, dtype, _ in self._layout], self.config,
                                  client.rounding_generator(), worker_id)  # fmt: skip
        self._clipped += clipped
        protocol.submit(worker_id, q)  # the server receives only the masked vector
        self._weights[worker_id] = float(weight)

    def drop(self, worker_id: Hashable) -> None:
        """``worker_id`` failed before sending its update: its masks are removed at :meth:`finalize`."""
        self._require_round("drop").drop(worker_id)

    @property
    @override
    def num_contributions(self) -> int:
        return 0 if self._round is None else len(self._round.server.survivors)

    # -- several processes ----------------------------------------------------------------------------------------
    @override
    def setup_processes(self, collective: Collective) -> None:
        """From now on each round's protocol runs over the processes: every process holds the secrets of its own
        workers, and only masked partial sums, public keys and encrypted shares travel between processes."""
        self.inner.setup_processes(collective)
        self._collective = collective

    @override
    def sync_round(self, collective: Collective) -> None:
        """Add up the processes' partial sums of masked vectors (pairwise masks across processes cancel in the
        total), learn who sent, and share the public sample weights and the clipping count."""
        protocol = self._require_round("sync_round")
        if isinstance(protocol, DistributedSecureAggregationRound):
            protocol.combine()
        parts = collective.all_gather_object((self._weights, self._clipped))
        self._weights = {w: weight for weights, _ in parts for w, weight in weights.items()}
        self._clipped = sum(clipped for _, clipped in parts)

    @override
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        protocol = self._require_round("finalize")
        if not protocol.server.survivors:
            raise LightningFedError("no worker contributed to this round: nothing to aggregate.")
        ring_sum = protocol.finish()
        total = sum(self._weights[w] for w in protocol.server.survivors)
        self._round = None
        self.last_round_clipped = self._clipped
        if self._clipped:
            warnings.warn(
                f"secure aggregation clipped {self._clipped} coordinates of this round's weighted updates to "
                f"[-clip, clip] = [-{self.config.clip}, {self.config.clip}]: raise SecureAggregationConfig(clip=...).",
                stacklevel=2,
            )
        flat = dequantize(ring_sum, fractional_bits=self.config.fractional_bits, bits=self.config.bits)
        return self._finish(global_tensors, self._unflatten(flat), total)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _require_round(self, what: str) -> SecureAggregationRound:
        if self._round is None:
            raise LightningFedError(f"SecureAggregator.{what}() before begin_round(): the strategy drives this order.")
        return self._round

    def _unflatten(self, flat: Tensor) -> list[Tensor]:
        out, start = [], 0
        for shape, dtype, device in self._layout:
            n = shape.numel() * (2 if dtype.is_complex else 1)
            piece = flat[start : start + n]
            start += n
            t = torch.view_as_complex(piece.reshape(*shape, 2)) if dtype.is_complex else piece.reshape(shape)
            out.append(t.to(device))
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "round_index": self._round_index}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self._round_index = int(state.get("round_index", 0))

    @override
    def __repr__(self) -> str:
        return f"SecureAggregator({self.inner!r}, {self.config!r})"
