"""A secure-aggregation round whose participants are remote sites: the server holds no secret and no single update.

:class:`RemoteSecureAggregationRound` is the server's side of :mod:`.protocol` when each participant's client runs at
its own site (:mod:`lightning_fed.transport.secagg`), reached through its
:class:`~lightning_fed.transport.RemoteWorker`. It holds what Bonawitz et al.'s server holds: the public keys, the
encrypted shares it relays, the running sum of masked vectors and, at the end, the unmasking shares; never a private
key, a self-mask seed, an individual update or a site's model. The requests of one protocol round go to all sites at
once (an executor), and:

* a site that cannot be reached, times out, crashes or lost its client (restarted) in round 0 or 1 is left out of the
  round (the protocol's ``U1``/``U2``; :attr:`left_out` says why), and the backend records it as the round's failure;
* a site that fails in round 2 (its training and masked input) is dropped: the others' shares rebuild its mask key at
  the end, as in simulation; more than ``n - t`` dropouts raise :class:`~.config.SecureAggregationError`;
* a survivor that fails in round 3 just does not answer: ``t`` answers suffice;
* any other answer (a refusal: a seeded round the site does not allow, a config it cannot read) is raised, since it
  would fail every round; without ``tolerate_failures`` every failure is raised.

Round 2 meets the strategy's round: the backend asks :meth:`train_input` for each site's part of its
``TrainRequest``, hands the site's answer to :meth:`receive`, and
:meth:`~lightning_fed.secure_aggregation.SecureAggregator.accumulate` confirms it (:meth:`accept`) when the round
lifecycle delivers that site, or :meth:`drop` s it.

Example:
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> import torch
    >>> from lightning_fed.secure_aggregation import SecureAggregationConfig
    >>> from lightning_fed.transport import RemoteWorker
    >>> from lightning_fed.transport.server import SiteServer, SiteWorker
    >>> servers = {w: SiteServer(SiteWorker(w), "127.0.0.1:0", insecure=True) for w in ("ra", "rb", "rc")}
    >>> sites = {w: RemoteWorker(w, f"127.0.0.1:{s.start()}", insecure=True, timeout=20) for w, s in servers.items()}
    >>> pool = ThreadPoolExecutor(3)
    >>> config = SecureAggregationConfig()
    >>> protocol = RemoteSecureAggregationRound(["ra", "rb", "rc"], 2, config, sites=sites, federation="demo",
    ...                                         executor=pool)
    >>> sorted(protocol.inboxes["ra"]), protocol.left_out
    (['rb', 'rc'], {})
    >>> protocol.client("ra")
    Traceback (most recent call last):
    ...
    lightning_fed.secure_aggregation.config.SecureAggregationError: 'ra''s secure-aggregation client is at its site...
    >>> for w in sites.values(): w.close()
    >>> for s in servers.values(): s.stop()
    >>> pool.shutdown()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from torch import Tensor

from lightning_fed.secure_aggregation.client import AdvertisedKeys, SecAggClient, UnmaskingShares
from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.keys import KEY_BYTES
from lightning_fed.secure_aggregation.protocol import SecureAggregationRound, round_parameters
from lightning_fed.secure_aggregation.server import SecAggServer
from lightning_fed.secure_aggregation.shamir import Share
from lightning_fed.transport.errors import SiteUnavailableError
from lightning_fed.transport.remote import RemoteWorker
from lightning_fed.transport.secagg import SecAggInput, SecAggKeys, SecAggShares, SecAggUnmask, config_fields

log = logging.getLogger("lightning_fed.secure_aggregation.remote")
_DROPOUTS = (SiteUnavailableError, SecureAggregationError)  # unreachable, timed out, crashed, restarted


class RemoteSecureAggregationRound(SecureAggregationRound):
    """The server's side of one secure-aggregation round over remote sites (see the module docstring).

    Args:
        participants: the round's site ids, in order (a site's index is its position, from 1).
        numel: the length of the flattened model update.
        config: the round's :class:`~.config.SecureAggregationConfig` (sent to the sites as plain values).
        round_index: the protocol's round (it binds the keys).
        sites: the :class:`~lightning_fed.transport.RemoteWorker` of each participant.
        federation: the run's id at the sites.
        executor: runs one protocol round's requests to all sites at once.
        tolerate_failures: leave failing sites out (``False``: any failure is raised).
    """

    masks_at_sites = True  # SecureAggregator.accumulate confirms a site's masked vector instead of masking here

    def __init__(self, participants: Sequence[Hashable], numel: int, config: SecureAggregationConfig,
                 round_index: int = 0, *, sites: Mapping[Hashable, RemoteWorker], federation: str,
                 executor: Executor, tolerate_failures: bool = True) -> None:  # fmt: skip
        participants = list(participants)
        threshold, context = round_parameters(participants, config, round_index)
        self.config, self.threshold, self.participants = config, threshold, participants
        self.numel, self.round_index, self.federation = numel, round_index, federation
        self.server = SecAggServer(participants, threshold, config.bits, numel)
        self.left_out: dict[Hashable, Exception] = {}  # failed in round 0 or 1, with why
        self._sites = {w: sites[w] for w in participants}
        self._names = {str(w): w for w in participants}
        self._executor, self._tolerate = executor, tolerate_failures
        self._weights: dict[Hashable, float] = {}
        self._pending: dict[Hashable, tuple[Tensor, int]] = {}
        names = tuple(self._names)
        fields = config_fields(config)
        keys = self._ask(participants, lambda w: SecAggKeys(federation, round_index, names, fields), "round 0")
        roster = self.server.collect_keys({w: self._keys(w, k) for w, k in keys.items()}, context)
        on_wire = {str(w): (k.index, k.c_public, k.s_public) for w, k in roster.items()}
        sealed = self._ask(list(roster), lambda w: SecAggShares(federation, round_index, on_wire), "round 1")
        self.inboxes = self.server.route_shares({w: self._sealed(w, boxes) for w, boxes in sealed.items()})

    # -- the sites ------------------------------------------------------------------------------------------------
    def _ask(self, workers: Sequence[Hashable], request: Callable[[Hashable], Any], step: str) -> dict[Hashable, Any]:
        """Send ``request(w)`` to each site at once; the answers of those that answered (dropouts are noted)."""
        futures = {w: self._executor.submit(self._sites[w].secure_aggregation, request(w)) for w in workers}
        answers, refusal = {}, None
        for w, future in futures.items():
            try:
                answers[w] = future.result()
            except _DROPOUTS as err:
                if not self._tolerate:
                    refusal = refusal or err
                    continue
                log.warning("secure aggregation %s: site %r is left out of the round: %s", step, w, err)
                self.left_out.setdefault(w, err)
            except Exception as err:  # a refusal would repeat every round: raised once every answer is in
                refusal = refusal or err
        if refusal is not None:
            raise refusal
        return answers

    def _keys(self, worker: Hashable, answer: Any) -> AdvertisedKeys:
        ok = isinstance(answer, dict) and answer.get("index") == self.participants.index(worker) + 1
        ok = ok and all(type(answer.get(k)) is bytes and len(answer[k]) == KEY_BYTES for k in ("c_public", "s_public"))
        if not ok:
            raise SecureAggregationError(f"site {worker!r} answered round 0 with malformed keys: {answer!r:.200}.")
        return AdvertisedKeys(answer["index"], answer["c_public"], answer["s_public"])

    def _sealed(self, worker: Hashable, answer: Any) -> dict[Hashable, bytes]:
        if not isinstance(answer, dict) or not all(k in self._names and type(v) is bytes for k, v in answer.items()):
            raise SecureAggregationError(f"site {worker!r} answered round 1 with malformed shares: {answer!r:.200}.")
        return {self._names[k]: v for k, v in answer.items()}

    # -- round 2: the sites' masked inputs ------------------------------------------------------------------------
    def takes_part(self, worker_id: Hashable) -> bool:
        """Whether ``worker_id`` shared its keys (so its masked input can be summed and recovered)."""
        return worker_id in self.inboxes

    def train_input(self, worker_id: Hashable, weight: float) -> SecAggInput:
        """``worker_id``'s part of its ``TrainRequest``: its inbox of encrypted shares and its sample weight; raises
        why it was left out in round 0 or 1."""
        if not self.takes_part(worker_id):
            raise self.left_out.get(worker_id) or SecureAggregationError(
                f"site {worker_id!r} did not share its keys in this secure-aggregation round."
            )
        self._weights[worker_id] = float(weight)
        inbox = {str(u): box for u, box in self.inboxes[worker_id].items()}
        return SecAggInput(self.round_index, inbox, float(weight), self.numel)

    def receive(self, worker_id: Hashable, masked: Any, clipped: Any) -> None:
        """A site's answer: its masked int64 vector and clipped count (summed when :meth:`accept` confirms it)."""
        if not isinstance(masked, Tensor) or type(clipped) is not int or clipped < 0:
            raise SecureAggregationError(
                f"site {worker_id!r} answered its secure-aggregation round without a masked update (got "
                f"{type(masked).__name__}, clipped={clipped!r}): is the site running this version of lightning_fed?"
            )
        self._pending[worker_id] = (masked, clipped)

    def accept(self, worker_id: Hashable, weight: float) -> int:
        """The round lifecycle delivers ``worker_id``: its masked vector joins the running sum; returns its clipped
        count. ``weight`` must be the one the site multiplied its update by."""
        if worker_id not in self._pending:
            raise SecureAggregationError(f"no masked update from site {worker_id!r} in this round to accept.")
        if self._weights.get(worker_id) != float(weight):
            raise SecureAggregationError(
                f"site {worker_id!r} weighted its update by {self._weights.get(worker_id)}, the round delivers it "
                f"with weight {weight}: the sample counts changed during the round."
            )
        masked, clipped = self._pending.pop(worker_id)
        self.server.receive_masked(worker_id, masked)  # int64 ring vectors of the round's length only
        return clipped

    def client(self, worker_id: Hashable) -> SecAggClient:
        raise SecureAggregationError(
            f"{worker_id!r}'s secure-aggregation client is at its site: the server holds no participant's secrets."
        )

    def submit(self, worker_id: Hashable, x: Tensor) -> None:
        self.client(worker_id)

    def drop(self, worker_id: Hashable) -> None:
        if worker_id not in self._sites:
            raise SecureAggregationError(f"{worker_id!r} is not a participant of this round: {self.participants}.")
        self._pending.pop(worker_id, None)
        self.server.drop(worker_id)

    # -- round 3 --------------------------------------------------------------------------------------------------
    def finish(self) -> Tensor:
        """Round 3: the survivors' sum of inputs, in ``Z_(2^k)``, from the responding survivors' shares."""
        survivors, dropped = self.server.unmasking_request()
        responders = [v for v in survivors if v not in self.server.silent]
        request = SecAggUnmask(self.federation, self.round_index, tuple(str(v) for v in survivors),
                               tuple(str(u) for u in dropped))  # fmt: skip
        answers = self._ask(responders, lambda _: request, "round 3")
        return self.server.unmask({v: self._shares(v, a, survivors, dropped) for v, a in answers.items()})

    def _shares(self, worker: Hashable, answer: Any, survivors: list, dropped: list) -> UnmaskingShares:
        index = self.participants.index(worker) + 1
        try:
            s, b = answer["s"], answer["b"]
            return UnmaskingShares(
                s_shares={u: Share.from_bytes(index, s[str(u)]) for u in dropped},
                b_shares={u: Share.from_bytes(index, b[str(u)]) for u in survivors},
            )
        except (KeyError, TypeError):
            raise SecureAggregationError(
                f"site {worker!r} answered the unmasking request without the shares asked for: {answer!r:.200}."
            ) from None
