"""The server's side of a secure-aggregation round (see :mod:`.protocol`): it routes, sums, and unmasks the sum.

It sees public keys, ciphertexts of shares (it cannot read them), masked vectors (each uniform on its own; it keeps only
their running sum) and, at the end, the shares it needs to remove the masks: never an individual input.

Example:
    >>> import torch
    >>> server = SecAggServer(["a", "b"], threshold=2, bits=64, numel=3)
    >>> server.receive_masked("a", torch.zeros(3))
    Traceback (most recent call last):
    ...
    TypeError: the secure-aggregation server takes masked int64 ring vectors ... got Tensor torch.float32 (3,)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from lightning_fed.secure_aggregation.client import AdvertisedKeys, UnmaskingShares
from lightning_fed.secure_aggregation.config import SecureAggregationError
from lightning_fed.secure_aggregation.keys import KEY_BYTES, KeyPair, pairwise_seed
from lightning_fed.secure_aggregation.prg import SEED_BYTES, prg_ring
from lightning_fed.secure_aggregation.quantization import ring_add_, ring_sub_
from lightning_fed.secure_aggregation.shamir import reconstruct_bytes


class SecAggServer:
    """The server's side: routes keys and ciphertexts, sums masked vectors, removes the masks at the end.

    It only ever receives masked int64 ring vectors (:meth:`receive_masked` refuses anything else) and keeps only
    their running sum.
    """

    def __init__(self, participants: Sequence[Hashable], threshold: int, bits: int, numel: int) -> None:
        self.participants = list(participants)
        self.threshold = threshold
        self.bits = bits
        self.numel = numel
        self._roster: dict[Hashable, AdvertisedKeys] = {}
        self._sharers: list[Hashable] = []
        self._sum = torch.zeros(numel, dtype=torch.int64)
        self._received: list[Hashable] = []
        self._silent: set[Hashable] = set()
        self._context = b""

    def collect_keys(self, keys: Mapping[Hashable, AdvertisedKeys], context: bytes) -> dict[Hashable, AdvertisedKeys]:
        """Round 0: the roster to broadcast."""
        unknown = [w for w in keys if w not in self.participants]
        if unknown or len(keys) < self.threshold:
            raise SecureAggregationError(
                f"round 0: keys from {len(keys)} participants (unknown: {unknown}), threshold t={self.threshold}."
            )
        self._roster, self._context = dict(keys), context
        return dict(keys)

    def route_shares(self, outgoing: Mapping[Hashable, Mapping[Hashable, bytes]]) -> dict[Hashable, dict]:
        """Round 1: each sharer's inbox (the ciphertexts addressed to it by the other sharers)."""
        self._sharers = [u for u in self._roster if u in outgoing]
        if len(self._sharers) < self.threshold:
            raise SecureAggregationError(
                f"round 1: only {len(self._sharers)} participants shared their keys, fewer than t={self.threshold}."
            )
        return {v: {u: bytes(outgoing[u][v]) for u in self._sharers if u != v} for v in self._sharers}

    def receive_masked(self, worker_id: Hashable, y: Tensor) -> None:
        """Round 2: add a masked vector into the running sum. Only int64 ring vectors of the round's length pass."""
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (self.numel,):
            raise TypeError(
                f"the secure-aggregation server takes masked int64 ring vectors of length {self.numel} only, got "
                f"{type(y).__name__}" + (f" {y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else "")
            )
        if self.bits == 32 and bool(((y < 0) | (y > 0xFFFFFFFF)).any()):
            raise TypeError("a 32-bit masked vector must hold residues in [0, 2**32).")
        if worker_id not in self._sharers or worker_id in self._received or worker_id in self._silent:
            raise SecureAggregationError(
                f"masked input from {worker_id!r} refused: it did not share its keys this round, already sent one, "
                "or was dropped."
            )
        ring_add_(self._sum, y.to("cpu"), self.bits)
        self._received.append(worker_id)

    def drop(self, worker_id: Hashable) -> None:
        """``worker_id`` will not send (or, after sending, will not answer the unmasking request)."""
        self._silent.add(worker_id)

    @property
    def silent(self) -> set[Hashable]:
        """The workers :meth:`drop` named: they do not answer the unmasking request."""
        return set(self._silent)

    @property
    def survivors(self) -> list[Hashable]:
        return list(self._received)

    @property
    def dropped(self) -> list[Hashable]:
        return [u for u in self._sharers if u not in self._received]

    def unmasking_request(self) -> tuple[list[Hashable], list[Hashable]]:
        """Round 3: ``(survivors, dropped)`` to send to the survivors; raises with fewer than ``t`` survivors."""
        survivors, dropped = self.survivors, self.dropped
        if len(survivors) < self.threshold:
            n = len(self.participants)
            raise SecureAggregationError(
                f"secure aggregation cannot finish: {len(dropped)} of {n} participants dropped out after sharing "
                f"their keys and only {len(survivors)} sent a masked update, fewer than the threshold t="
                f"{self.threshold}; the masks can be removed with at most n - t = {n - self.threshold} dropouts."
            )
        return survivors, dropped

    def unmask(self, responses: Mapping[Hashable, UnmaskingShares]) -> Tensor:
        """Round 3: rebuild the secrets from the responses and return the survivors' sum, ``sum x_u`` mod 2**k."""
        survivors, dropped = self.unmasking_request()
        if len(responses) < self.threshold:
            raise SecureAggregationError(
                f"only {len(responses)} survivors answered the unmasking request, fewer than t={self.threshold}."
            )
        bits, numel, total = self.bits, self.numel, self._sum.clone()
        for u in dropped:  # remove the pairwise masks between u and every survivor
            s_u = reconstruct_bytes([r.s_shares[u] for r in responses.values()], self.threshold, KEY_BYTES)
            if KeyPair.generate(s_u).public_bytes != self._roster[u].s_public:
                raise SecureAggregationError(f"the shares of {u!r}'s mask key do not rebuild its advertised key.")
            for v in survivors:
                p = prg_ring(pairwise_seed(s_u, self._roster[v].s_public, self._context), numel, bits)
                (ring_sub_ if self._roster[u].index > self._roster[v].index else ring_add_)(total, p, bits)
        for u in survivors:  # remove the self masks
            b_u = reconstruct_bytes([r.b_shares[u] for r in responses.values()], self.threshold, SEED_BYTES)
            ring_sub_(total, prg_ring(b_u, numel, bits), bits)
        return total
