"""The participant's side of a secure-aggregation round (see :mod:`.protocol`): its keys and secrets stay here.

Example:
    >>> import torch
    >>> from lightning_fed.secure_aggregation.config import SecureAggregationConfig
    >>> config = SecureAggregationConfig(seed=0)
    >>> a, b = (SecAggClient(w, i, config, threshold=2, context=b"demo") for i, w in ((1, "a"), (2, "b")))
    >>> roster = {"a": a.advertise(), "b": b.advertise()}
    >>> a.receive_shares({"b": b.share_keys(roster)["a"]})
    >>> b.receive_shares({"a": a.share_keys(roster)["b"]})
    >>> x = torch.tensor([5, -7])
    >>> y = a.mask(x)  # x + a's self mask + the pairwise mask shared with b
    >>> bool((y != x).all())
    True
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.keys import KEY_BYTES, KeyPair, open_sealed, pairwise_seed, seal
from lightning_fed.secure_aggregation.prg import SEED_BYTES, SecretSource, prg_ring
from lightning_fed.secure_aggregation.quantization import ring_add_, ring_sub_
from lightning_fed.secure_aggregation.shamir import SHARE_BYTES, Share, split_bytes


@dataclass(frozen=True)
class AdvertisedKeys:
    """Round 0: a participant's index (its Shamir ``x``) and public keys."""

    index: int
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class UnmaskingShares:
    """Round 3: a survivor's shares of the dropped workers' ``s`` keys and of the survivors' self-mask seeds."""

    s_shares: dict[Hashable, Share]
    b_shares: dict[Hashable, Share]


def _associated(context: bytes, sender: int, recipient: int) -> bytes:
    return context + b"|shares|%d->%d" % (sender, recipient)


class SecAggClient:
    """A participant's side of one round: its keys, self-mask seed, received shares; it masks its own input."""

    def __init__(self, worker_id: Hashable, index: int, config: SecureAggregationConfig, threshold: int,
                 context: bytes) -> None:  # fmt: skip
        self.worker_id = worker_id
        self.index = index
        self._bits = config.bits
        self._t = threshold
        self._context = context
        self._source = SecretSource(config.seed, context + b"|client=%d" % index)
        seeded = self._source.seeded
        self._c = KeyPair.generate(self._source.token(KEY_BYTES) if seeded else None)
        self._s = KeyPair.generate(self._source.token(KEY_BYTES) if seeded else None)
        self._b = self._source.token(SEED_BYTES)
        self._roster: dict[Hashable, AdvertisedKeys] = {}
        self._inbox: dict[Hashable, bytes] = {}
        self._own: tuple[Share, Share] | None = None
        self._revealed: dict[Hashable, str] = {}

    def advertise(self) -> AdvertisedKeys:
        return AdvertisedKeys(self.index, self._c.public_bytes, self._s.public_bytes)

    def rounding_generator(self) -> torch.Generator:
        """The generator this participant's stochastic rounding draws from (seeded with the config's seed)."""
        return self._source.generator()

    def share_keys(self, roster: Mapping[Hashable, AdvertisedKeys]) -> dict[Hashable, bytes]:
        """Round 1: encrypted shares of ``s_u`` and ``b_u`` for every other participant in the broadcast roster."""
        if roster.get(self.worker_id) != self.advertise() or len(roster) < self._t:
            raise SecureAggregationError(
                f"participant {self.worker_id!r} got a roster without its own keys or with fewer than t={self._t} "
                "participants: it stops here."
            )
        self._roster = dict(roster)
        n = max(keys.index for keys in roster.values())
        s_shares = split_bytes(self._s.private_bytes, n, self._t, self._source)
        b_shares = split_bytes(self._b, n, self._t, self._source)
        out = {}
        for v, keys in roster.items():
            s_share, b_share = s_shares[keys.index - 1], b_shares[keys.index - 1]
            if v == self.worker_id:
                self._own = (s_share, b_share)
                continue
            payload = s_share.to_bytes() + b_share.to_bytes()
            out[v] = seal(
                self._c.private_bytes, keys.c_public, payload, _associated(self._context, self.index, keys.index)
            )
        return out

    def receive_shares(self, inbox: Mapping[Hashable, bytes]) -> None:
        """End of round 1: the ciphertexts the others sent us (their senders are ``U2``, with us)."""
        self._inbox = dict(inbox)

    def mask(self, x: Tensor) -> Tensor:
        """Round 2: ``y = x + PRG(b) + sum of signed pairwise masks`` mod ``2**k``, for ``x`` int64 ring elements."""
        y = x.to(torch.int64).reshape(-1).clone()
        ring_add_(y, prg_ring(self._b, y.numel(), self._bits), self._bits)
        for v in self._inbox:
            peer = self._roster[v]
            p = prg_ring(pairwise_seed(self._s.private_bytes, peer.s_public, self._context), y.numel(), self._bits)
            (ring_add_ if peer.index > self.index else ring_sub_)(y, p, self._bits)
        return y

    def _shares_from(self, u: Hashable) -> tuple[Share, Share]:
        if u == self.worker_id and self._own is not None:
            return self._own
        if u not in self._inbox:
            raise SecureAggregationError(f"participant {self.worker_id!r} holds no shares from {u!r}.")
        sender = self._roster[u]
        plain = open_sealed(self._c.private_bytes, sender.c_public, self._inbox[u],
                            _associated(self._context, sender.index, self.index))  # fmt: skip
        return Share.from_bytes(self.index, plain[:SHARE_BYTES]), Share.from_bytes(self.index, plain[SHARE_BYTES:])

    def unmasking_shares(self, survivors: Collection[Hashable], dropped: Collection[Hashable]) -> UnmaskingShares:
        """Round 3: shares of ``s_u`` for each dropped ``u`` and of ``b_u`` for each survivor (never both)."""
        if set(survivors) & set(dropped) or len(set(survivors)) < self._t or self.worker_id not in survivors:
            raise SecureAggregationError(
                f"participant {self.worker_id!r} refuses the unmasking request: survivors and dropped overlap, fewer "
                f"than t={self._t} survived, or it is not listed as a survivor."
            )
        for u, kind in [(u, "s") for u in dropped] + [(u, "b") for u in survivors]:
            if self._revealed.setdefault(u, kind) != kind:
                raise SecureAggregationError(
                    f"participant {self.worker_id!r} already revealed its share of {u!r}'s other secret: revealing "
                    "both would unmask that worker's input."
                )
        return UnmaskingShares(
            s_shares={u: self._shares_from(u)[0] for u in dropped},
            b_shares={u: self._shares_from(u)[1] for u in survivors},
        )
