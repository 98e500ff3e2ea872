"""One round of secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", the semi-honest protocol with dropout recovery), in ``Z_(2^k)``.

The parties are :class:`SecAggClient` (one per participant: its secrets stay in it) and :class:`SecAggServer` (sees
public keys, ciphertexts, masked vectors and, at the end, the sum). :class:`SecureAggregationRound` wires them:

0. *AdvertiseKeys*: each participant ``u`` (1-based index ``u`` in the participant list) makes two X25519 key pairs,
   ``c`` (share encryption) and ``s`` (mask agreement), and sends their public halves; the server broadcasts them.
1. *ShareKeys*: ``u`` draws a self-mask seed ``b_u`` and Shamir-shares ``b_u`` and its private key ``s_u``, t-of-n;
   the share for ``v`` is encrypted to ``v`` (ChaCha20-Poly1305 under ``X25519(c_u, C_v)``) and routed by the server.
   ``U2`` is the set that shared.
2. *MaskedInput*: ``y_u = x_u + PRG(b_u) + sum_{v in U2, v > u} PRG(s_uv) - sum_{v in U2, v < u} PRG(s_uv)`` mod
   ``2**k`` (``s_uv`` from ``X25519(s_u, S_v)``, the same for both sides). The server adds each ``y_u`` into its
   running sum and keeps nothing else of it; ``U3`` is the set that sent (a worker that fails before is *dropped*).
3. *Unmasking*: with ``|U3| >= t``, each responding survivor decrypts its shares and returns, for each dropped ``u``,
   its share of ``s_u`` and, for each survivor ``u``, its share of ``b_u`` (never both for one ``u``: a client refuses
   that). From ``t`` shares the server rebuilds ``s_u`` of the dropped (and removes their pairwise masks from the
   survivors' sum) and ``b_u`` of the survivors (and removes the self masks). What is left is ``sum_{u in U3} x_u``.

Pairwise masks cancel between survivors; the self mask keeps a late-arriving ``y_u`` of a worker declared dropped
from being unmasked. More than ``n - t`` dropouts end the round with :class:`SecureAggregationError`.

Example:
    >>> import torch
    >>> from lightning_fed.secure_aggregation.config import SecureAggregationConfig
    >>> config = SecureAggregationConfig(bits=32, clip=100.0, fractional_bits=8, seed=0)
    >>> x = {w: torch.tensor([i, 2 * i]) for i, w in enumerate(["a", "b", "c"], start=1)}
    >>> secure_sum(x, config).tolist(), secure_sum(x, config, dropped=["b"]).tolist()
    ([6, 12], [4, 8])
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence

from torch import Tensor

from lightning_fed.secure_aggregation.client import AdvertisedKeys, SecAggClient, UnmaskingShares
from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.quantization import check_overflow
from lightning_fed.secure_aggregation.server import SecAggServer

__all__ = ["AdvertisedKeys", "SecAggClient", "SecAggServer", "SecureAggregationRound", "UnmaskingShares", "secure_sum"]


def round_parameters(
    participants: Sequence[Hashable], config: SecureAggregationConfig, round_index: int
) -> tuple[int, bytes]:
    """The round's Shamir threshold and the context its keys are bound to; refuses repeated participants and rings
    too small for the sum."""
    n = len(participants)
    if len(set(participants)) != n:
        raise SecureAggregationError(f"participants must be distinct, got {list(participants)}")
    threshold = config.threshold_for(n)
    check_overflow(n, config.clip, config.fractional_bits, config.bits)
    return threshold, b"lightning_fed/secagg/v1|round=%d|n=%d|t=%d|k=%d" % (round_index, n, threshold, config.bits)


class SecureAggregationRound:
    """Rounds 0 and 1 at construction; then :meth:`submit` (round 2, per worker), :meth:`drop`, :meth:`finish`.

    Example:
        >>> import torch
        >>> config = SecureAggregationConfig(seed=0)
        >>> protocol = SecureAggregationRound(["a", "b", "c"], numel=2, config=config)
        >>> protocol.submit("a", torch.tensor([1, 2]))
        >>> protocol.submit("b", torch.tensor([10, 20]))
        >>> protocol.drop("c")  # it shared its keys, then failed
        >>> protocol.server.survivors, protocol.server.dropped, protocol.finish().tolist()
        (['a', 'b'], ['c'], [11, 22])
    """

    def __init__(self, participants: Sequence[Hashable], numel: int, config: SecureAggregationConfig,
                 round_index: int = 0) -> None:  # fmt: skip
        threshold, context = round_parameters(participants, config, round_index)
        self.config, self.threshold = config, threshold
        self.server = SecAggServer(participants, threshold, config.bits, numel)
        self._clients = {w: SecAggClient(w, i + 1, config, threshold, context) for i, w in enumerate(participants)}
        roster = self.server.collect_keys({w: c.advertise() for w, c in self._clients.items()}, context)
        inboxes = self.server.route_shares({w: c.share_keys(roster) for w, c in self._clients.items()})
        for w, inbox in inboxes.items():
            self._clients[w].receive_shares(inbox)

    def client(self, worker_id: Hashable) -> SecAggClient:
        """The client side of ``worker_id`` (its secrets: the worker's part of the protocol)."""
        try:
            return self._clients[worker_id]
        except KeyError:
            raise SecureAggregationError(
                f"{worker_id!r} is not a participant of this secure-aggregation round: {list(self._clients)}."
            ) from None

    def submit(self, worker_id: Hashable, x: Tensor) -> None:
        """Round 2 for one worker: mask its ring vector ``x`` at the client and hand only ``y`` to the server."""
        self.server.receive_masked(worker_id, self.client(worker_id).mask(x))

    def drop(self, worker_id: Hashable) -> None:
        self.client(worker_id)
        self.server.drop(worker_id)

    def finish(self) -> Tensor:
        """Round 3: the survivors' sum of inputs, in ``Z_(2^k)``."""
        survivors, dropped = self.server.unmasking_request()
        responders = [v for v in survivors if v not in self.server.silent]
        return self.server.unmask({v: self._clients[v].unmasking_shares(survivors, dropped) for v in responders})


def secure_sum(inputs: Mapping[Hashable, Tensor], config: SecureAggregationConfig, *,
               dropped: Collection[Hashable] = (), round_index: int = 0) -> Tensor:  # fmt: skip
    """The secure sum of ring vectors ``inputs`` (int64, one per participant) when ``dropped`` fail to send."""
    numel = next(iter(inputs.values())).numel()
    protocol = SecureAggregationRound(list(inputs), numel, config, round_index)
    for worker_id, x in inputs.items():
        if worker_id not in dropped:
            protocol.submit(worker_id, x)
    return protocol.finish()
