"""Secure aggregation at a site: the client side of the protocol runs where the data is, its secrets stay there.

A deployed secure-aggregation round (Bonawitz et al. 2017, :mod:`lightning_fed.secure_aggregation.protocol`) is four
typed requests per site, each in the site's allowlist (:mod:`.wire`); the server side is
:class:`~lightning_fed.secure_aggregation.remote.RemoteSecureAggregationRound`:

0. :class:`SecAggKeys`: the run, the protocol round, the participants (site ids, in order) and the
   :class:`~lightning_fed.secure_aggregation.SecureAggregationConfig` as plain values. The site makes its
   :class:`~lightning_fed.secure_aggregation.SecAggClient` for (run, round) and answers with its public keys only.
1. :class:`SecAggShares`: the roster of public keys; the site answers with its Shamir shares for the others, each
   encrypted to its recipient (the server relays ciphertexts it cannot read).
2. A :class:`~.training.TrainRequest` carrying :class:`SecAggInput` (the site's inbox of encrypted shares and its
   public sample weight): after training, the site turns ``local - global`` into ``weight * update`` clipped,
   quantized with its own rounding and masked (:func:`~lightning_fed.secure_aggregation.aggregator.worker_input`,
   the simulation's very function) and answers with the masked int64 vector and the clipped count, never its model.
   A client masks once per round: a second request would reveal the difference of two inputs.
3. :class:`SecAggUnmask`: survivors and dropped; the site answers with its shares of the survivors' self-mask seeds
   and of the dropped sites' mask keys (the client refuses both secrets of one site), then forgets the round.

Clients live in memory only, per (run, round); a site that restarts has none and is that round's dropout.

**Seeded rounds are refused** unless the site's operator allows them: ``SecureAggregationConfig(seed=...)`` makes
every key reproducible, so a server that chose the seed could derive the site's keys and unmask its update. Tests of
deployed == simulated start their sites with ``lightning-fed worker --allow-seeded-secagg`` (test-only).

Example:
    >>> site = SiteSecAgg("alice")
    >>> keys = SecAggKeys("run1", 0, ("alice", "bob"), {"seed": 3})
    >>> site.advertise(keys)
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: site 'alice' refuses a seeded secure-aggregation round ...
    >>> answer = SiteSecAgg("alice").advertise(SecAggKeys("run1", 0, ("alice", "bob"), {}))
    >>> answer["index"], len(answer["c_public"]), len(answer["s_public"])
    (1, 32, 32)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.secure_aggregation.aggregator import worker_input
from lightning_fed.secure_aggregation.client import AdvertisedKeys, SecAggClient
from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.protocol import round_parameters

SEEDED_FLAG = "--allow-seeded-secagg"
MAX_OPEN_ROUNDS = 16  # clients of runs whose round 3 never came are forgotten beyond this many


@dataclass(frozen=True)
class SecAggKeys:
    """Round 0: make this site's client for (``federation``, ``round_index``) and advertise its public keys."""

    federation: str
    round_index: int
    participants: tuple[str, ...]
    config: dict[str, Any]  # SecureAggregationConfig's fields, plain values


@dataclass(frozen=True)
class SecAggShares:
    """Round 1: the roster ``{site: (index, c_public, s_public)}``; the site answers with encrypted shares."""

    federation: str
    round_index: int
    roster: dict[str, tuple[int, bytes, bytes]]


@dataclass(frozen=True)
class SecAggInput:
    """Round 2, inside a :class:`~.training.TrainRequest`: the site's inbox of encrypted shares (``{sender:
    ciphertext}``), its sample weight and the length of the model's flattened update."""

    round_index: int
    inbox: dict[str, bytes]
    weight: float
    numel: int


@dataclass(frozen=True)
class SecAggUnmask:
    """Round 3: the survivors (sent a masked input) and the dropped (shared keys, then failed)."""

    federation: str
    round_index: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


SECAGG_MESSAGES = (SecAggKeys, SecAggShares, SecAggUnmask)


def config_fields(config: SecureAggregationConfig) -> dict[str, Any]:
    """A config as the plain values :class:`SecAggKeys` carries."""
    return dataclasses.asdict(config)


def seeded_refusal(site_id: str, seed: int) -> str:
    return (
        f"site {site_id!r} refuses a seeded secure-aggregation round (SecureAggregationConfig(seed={seed})): a seed "
        "chosen by the server lets the server derive this site's keys and unmask its update. Use "
        f"SecureAggregationConfig(seed=None) (the default); for reproducibility tests only, start the site with "
        f"lightning-fed worker {SEEDED_FLAG}."
    )


@dataclass
class _Open:
    client: SecAggClient
    config: SecureAggregationConfig
    masked: bool = False


class SiteSecAgg:
    """A site's secure-aggregation clients, per (run, round), in memory (see the module docstring).

    Args:
        site_id: the site's id (its name in the participants list).
        allow_seeded: accept ``SecureAggregationConfig(seed=...)`` (``--allow-seeded-secagg``; tests only).
    """

    def __init__(self, site_id: str, allow_seeded: bool = False) -> None:
        self.site_id = site_id
        self.allow_seeded = bool(allow_seeded)
        self._open: dict[tuple[str, int], _Open] = {}

    @property
    def open_rounds(self) -> list[tuple[str, int]]:
        """The (run, round) pairs whose client this site holds."""
        return list(self._open)

    def advertise(self, request: SecAggKeys) -> dict[str, Any]:
        """Round 0: a fresh client for the round; its index and public keys."""
        try:
            config = SecureAggregationConfig(**request.config)
        except TypeError as err:
            raise FederatedConfigError(
                f"site {self.site_id!r}: a secure-aggregation config it cannot read: {err}."
            ) from None
        if config.seed is not None and not self.allow_seeded:
            raise PermissionDeniedError(seeded_refusal(self.site_id, config.seed))
        participants = list(request.participants)
        if self.site_id not in participants:
            raise SecureAggregationError(
                f"site {self.site_id!r} is not among the round's participants {participants}: check the site ids."
            )
        threshold, context = round_parameters(participants, config, request.round_index)
        index = participants.index(self.site_id) + 1
        for key in [k for k in self._open if k[0] == request.federation]:
            del self._open[key]  # an older round of this run never reached round 3: its secrets go
        while len(self._open) >= MAX_OPEN_ROUNDS:
            del self._open[next(iter(self._open))]
        client = SecAggClient(self.site_id, index, config, threshold, context)
        self._open[(request.federation, request.round_index)] = _Open(client, config)
        keys = client.advertise()
        return {"index": keys.index, "c_public": keys.c_public, "s_public": keys.s_public}

    def share(self, request: SecAggShares) -> dict[str, bytes]:
        """Round 1: this site's encrypted shares, by recipient."""
        found = self._client(request.federation, request.round_index, "share its keys")
        roster = {site: AdvertisedKeys(int(i), bytes(c), bytes(s)) for site, (i, c, s) in request.roster.items()}
        return {str(v): box for v, box in found.client.share_keys(roster).items()}

    def masked_input(self, federation: str, request: SecAggInput, update: Sequence[Tensor],
                     dtypes: Sequence[Any]) -> tuple[Tensor, int]:  # fmt: skip
        """Round 2: ``update`` (``local - global``, the model's tensors in order) weighted, clipped, quantized and
        masked; returns the masked ring vector and the clipped count."""
        found = self._client(federation, request.round_index, "mask its update")
        if found.masked:
            raise SecureAggregationError(
                f"site {self.site_id!r} already sent its masked update in round {request.round_index} of this run: "
                "a second one would reveal the difference of the two."
            )
        found.client.receive_shares(dict(request.inbox))
        q, clipped = worker_input(update, request.weight, dtypes, found.config, found.client.rounding_generator(),
                                  self.site_id)  # fmt: skip
        if q.numel() != request.numel:
            raise SecureAggregationError(
                f"site {self.site_id!r}'s update has {q.numel()} values, the server's model {request.numel}: the site "
                "and the server do not build the same model."
            )
        found.masked = True
        return found.client.mask(q), clipped

    def unmask(self, request: SecAggUnmask) -> dict[str, dict[str, bytes]]:
        """Round 3: the shares the server needs (never both of one site); the round's client is forgotten."""
        found = self._client(request.federation, request.round_index, "answer the unmasking request")
        del self._open[(request.federation, request.round_index)]
        shares = found.client.unmasking_shares(list(request.survivors), list(request.dropped))
        return {
            "s": {str(u): share.to_bytes() for u, share in shares.s_shares.items()},
            "b": {str(u): share.to_bytes() for u, share in shares.b_shares.items()},
        }

    def _client(self, federation: str, round_index: int, what: str) -> _Open:
        found = self._open.get((federation, round_index))
        if found is None:
            raise SecureAggregationError(
                f"site {self.site_id!r} cannot {what}: it holds no secure-aggregation client for round {round_index} "
                "of this run (it restarted since round 0, or the round is over): it is this round's dropout."
            )
        return found
