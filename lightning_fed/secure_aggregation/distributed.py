"""A secure-aggregation round whose participants train in several processes (see :mod:`.protocol`).

Each process holds the :class:`~.client.SecAggClient` of its own workers only: their private keys, self-mask seeds and
received shares never leave it. What the protocol has the server see, the processes exchange with the round's
:class:`~lightning_fed.collective.Collective`: the advertised public keys (round 0), the encrypted shares (round 1),
the masked inputs' running sums (round 2: one partial sum per process, added up in ``Z_(2^k)``, so the pairwise masks
of two workers in different processes cancel there) and the unmasking shares (round 3). Every process keeps a replica
of the server, fed the same messages, so every process unmasks the same sum.

A worker's ring element is masked in its own process: the only tensor a process sends is its partial sum of masked
vectors.

Example:
    >>> import torch
    >>> from lightning_fed.collective import Collective
    >>> from lightning_fed.secure_aggregation.config import SecureAggregationConfig
    >>> config = SecureAggregationConfig(seed=0)
    >>> one = Collective(owners={"a": 0, "b": 0, "c": 0})  # one process: the plain protocol
    >>> protocol = DistributedSecureAggregationRound(["a", "b", "c"], numel=2, config=config, collective=one)
    >>> protocol.submit("a", torch.tensor([1, 2])); protocol.submit("b", torch.tensor([10, 20])); protocol.drop("c")
    >>> protocol.combine()
    >>> protocol.server.survivors, protocol.finish().tolist()
    (['a', 'b'], [11, 22])
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from lightning_fed.collective import Collective
from lightning_fed.secure_aggregation.client import SecAggClient
from lightning_fed.secure_aggregation.config import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.protocol import SecureAggregationRound, round_parameters
from lightning_fed.secure_aggregation.quantization import ring_reduce_
from lightning_fed.secure_aggregation.server import SecAggServer

_LOW32 = 0xFFFFFFFF


def ring_all_reduce(x: Tensor, bits: int, collective: Collective) -> Tensor:
    """The sum over processes of the int64 ring vectors ``x`` in ``Z_(2^bits)``, exact for any number of processes.

    Each element travels as its two 32-bit halves (sums of those fit int64 without overflow) and is put back together
    with wrapping int64 arithmetic, as :func:`~.quantization.ring_add_` does.
    """
    if collective.world_size == 1:
        return x.clone()
    low = x & _LOW32
    high = (x >> 32) & _LOW32
    low, high = collective.all_reduce_sum([low, high])
    return ring_reduce_(low + torch.bitwise_left_shift(high, 32), bits)


def _merged(parts: list[dict], order: Sequence[Hashable]) -> dict:
    """The processes' dicts as one, in the participants' order."""
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return {w: merged[w] for w in order if w in merged}


class DistributedSecureAggregationRound(SecureAggregationRound):
    """:class:`~.protocol.SecureAggregationRound` over several processes: rounds 0 and 1 at construction (two
    ``all_gather_object``), :meth:`submit` and :meth:`drop` (inherited) for this process's workers, :meth:`combine`
    once every local worker has sent (the partial sums and who sent), then :meth:`finish` (the unmasking shares)."""

    def __init__(self, participants: Sequence[Hashable], numel: int, config: SecureAggregationConfig,
                 round_index: int = 0, *, collective: Collective) -> None:  # fmt: skip
        participants = list(participants)
        threshold, context = round_parameters(participants, config, round_index)
        self.config, self.threshold, self.collective = config, threshold, collective
        self.participants = participants
        self.server = SecAggServer(participants, threshold, config.bits, numel)  # a replica in every process
        self._clients = {
            w: SecAggClient(w, i + 1, config, threshold, context)
            for i, w in enumerate(participants)
            if collective.is_local(w)
        }
        keys = collective.all_gather_object({w: c.advertise() for w, c in self._clients.items()})
        roster = self.server.collect_keys(_merged(keys, participants), context)
        sealed = collective.all_gather_object({w: c.share_keys(roster) for w, c in self._clients.items()})
        inboxes = self.server.route_shares(_merged(sealed, participants))
        for w, client in self._clients.items():
            client.receive_shares(inboxes.get(w, {}))
        self._combined = False

    def client(self, worker_id: Hashable) -> SecAggClient:
        """The client side of ``worker_id``: only for the workers this process trains."""
        try:
            return self._clients[worker_id]
        except KeyError:
            where = self.collective.owners.get(worker_id)
            raise SecureAggregationError(
                f"{worker_id!r} is not a participant of this secure-aggregation round in this process (rank "
                f"{self.collective.rank}): "
                + (f"it trains in process {where}." if where is not None else f"participants: {self.participants}.")
            ) from None

    def combine(self) -> None:
        """End of round 2 in every process: add up the partial sums of masked vectors, learn who sent and who
        dropped. Every process must call it, once."""
        if self._combined:
            return
        server = self.server
        total = ring_all_reduce(server._sum, server.bits, self.collective)
        reports = self.collective.all_gather_object((list(server._received), sorted(server._silent, key=str)))
        received = {w for sent, _ in reports for w in sent}
        silent = {w for _, quiet in reports for w in quiet}
        server._sum = total
        server._received = [w for w in self.participants if w in received]
        server._silent = silent
        self._combined = True

    def finish(self) -> Tensor:
        """Round 3: every process answers for its own survivors; each process's server replica unmasks the sum."""
        self.combine()
        survivors, dropped = self.server.unmasking_request()
        silent = self.server.silent
        mine = {
            v: self._clients[v].unmasking_shares(survivors, dropped)
            for v in survivors
            if v in self._clients and v not in silent
        }
        responses = _merged(self.collective.all_gather_object(mine), self.participants)
        return self.server.unmask(responses)
