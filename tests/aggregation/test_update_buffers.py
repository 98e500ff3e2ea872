"""Each worker's update written into buffers reused from worker to worker (``Rounds.update_of``): the same values as
new tensors, bit for bit, and only for aggregators that declare they keep no reference to an update."""

from __future__ import annotations

import pytest
import torch

from lightning_fed import VirtualWorker
from lightning_fed.aggregation import SCAFFOLD, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx
from lightning_fed.aggregation.base import reads_update_once
from lightning_fed.aggregation.functional import model_delta, model_delta_, zeros_like_sums
from lightning_fed.rounds import RoundPlan, Rounds


def test_model_delta_into_buffers_equals_model_delta_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    local = [
        torch.randn(64, 33, generator=g) * 1e3,
        torch.randn(7, generator=g) * 1e-30,  # tiny values: widening before subtracting must be exact
        torch.randint(-(2**40), 2**40, (5,), generator=g),  # an integer buffer
        torch.tensor([True, False, True]),  # a bool buffer
        torch.randn(3, dtype=torch.complex64, generator=g),
    ]
    reference = [
        torch.randn(64, 33, generator=g) * 1e3,
        torch.randn(7, generator=g) * 1e-30,
        torch.randint(-(2**40), 2**40, (5,), generator=g),
        torch.tensor([False, False, True]),
        torch.randn(3, dtype=torch.complex64, generator=g),
    ]
    expected = model_delta(local, reference)
    out = zeros_like_sums(local)
    got = model_delta_(out, local, reference)
    assert [t.data_ptr() for t in got] == [t.data_ptr() for t in out]
    for e, o in zip(expected, got):
        assert e.dtype == o.dtype
        assert torch.equal(e, o)
    wide = [r.to(o.dtype) for r, o in zip(reference, out)]  # the reference already widened: the same values
    assert all(torch.equal(e, o) for e, o in zip(expected, model_delta_(zeros_like_sums(local), local, wide)))


class NotOptedIn(FedAvg):
    """A subclass that does not declare ``reads_update_once``: its updates come in new tensors."""


class Keeping(FedAvg):
    """A user's subclass that stores every update it sees (and so must not opt in)."""

    def accumulate(self, update, weight, worker_id):
        super().accumulate(update, weight, worker_id)
        self.seen = [*getattr(self, "seen", []), list(update)]


def run_rounds(aggregator, byzantine=None, rounds_count=3):
    weight = torch.nn.Parameter(torch.zeros(4))
    counter = torch.zeros((), dtype=torch.int64)  # an integer buffer
    rounds = Rounds(aggregator, byzantine=byzantine)
    workers = [VirtualWorker(id=f"ub-{i}") for i in range(3)]
    rounds.attach([weight, counter], num_params=1)
    rounds.add_workers({w.id: n for w, n in zip(workers, (1, 3, 5))})
    pointers = []
    g = torch.Generator().manual_seed(1)
    for r in range(rounds_count):
        rounds.begin(RoundPlan(r, tuple(workers), (1, 1, 1)), total_steps=3)
        for w in workers:
            rounds.start_worker(w, optimizers=[])
            with torch.no_grad():
                weight.add_(torch.randn(4, generator=g))
                counter.add_(1)
            rounds.local_steps = 1
            rounds.finish_worker(optimizers=[])
            pointers.append((r, tuple(b.data_ptr() for b in rounds._delta_buffers)))
        rounds.finalize()
        assert rounds._delta_buffers == [] and rounds._global_wide == []  # no update outlives its round
    return weight.detach().clone(), counter.clone(), pointers


@pytest.mark.parametrize("make", [FedAvg, FedAvgM, FedAdam, FedProx, SCAFFOLD])
def test_reused_buffers_give_the_same_model_as_new_tensors(make):
    assert reads_update_once(make())
    fast_weight, fast_counter, pointers = run_rounds(make())
    by_round = {r: {p for q, p in pointers if q == r} for r, _ in pointers}
    assert all(len(p) == 1 and () not in p for p in by_round.values())  # one set of buffers for a round's workers
    slow = type(f"Slow{make.__name__}", (make,), {"reads_update_once": False})
    slow_weight, slow_counter, slow_pointers = run_rounds(slow())
    assert {p for _, p in slow_pointers} == {()}  # no buffers: new tensors each time
    assert torch.equal(fast_weight, slow_weight) and torch.equal(fast_counter, slow_counter)


def test_subclasses_that_keep_updates_get_their_own_tensors():
    assert not reads_update_once(NotOptedIn()) and not reads_update_once(Keeping())
    assert not reads_update_once(FedMedian())  # it copies, but declares nothing: new tensors as before
    keeping = Keeping()
    run_rounds(keeping, rounds_count=1)
    first, second, third = keeping.seen
    assert len({first[0].data_ptr(), second[0].data_ptr(), third[0].data_ptr()}) == 3
    assert not torch.equal(first[0], second[0])  # each stored update is still its worker's


def test_a_byzantine_transform_sees_new_tensors():
    seen = []

    def byzantine(worker_id, update, global_tensors):
        seen.append(update)
        return update

    run_rounds(FedAvg(), byzantine=byzantine, rounds_count=1)
    assert len({u[0].data_ptr() for u in seen}) == 3
    assert not torch.equal(seen[0][0], seen[1][0])


@pytest.mark.parametrize(
    "secure, privacy",
    [(True, None), (False, "client"), (True, "client"), (False, "sample")],
    ids=["secure_aggregation", "client_dp", "both", "sample_dp"],
)
def test_secure_aggregation_and_dp_chains_keep_no_plaintext_update_buffer(secure, privacy):
    """An attacker reading the server's Rounds must not find a worker's unmasked, unclipped update left in reusable
    buffers: only the FedAvg family reuses them, never a chain that masks, clips or noises updates."""
    from lightning_fed.privacy.dp import DPConfig
    from lightning_fed.secure_aggregation import SecureAggregationConfig
    from lightning_fed.strategies.parts import build_aggregator

    noise = {"noise": "distributed"} if secure and privacy == "client" else {}  # secure sums take distributed noise
    dp = DPConfig(level=privacy, noise_multiplier=1.0, clip_norm=1.0, **noise) if privacy else None
    chain = build_aggregator("fedavg", SecureAggregationConfig(seed=0) if secure else False, dp, "fedavg")
    assert not reads_update_once(chain)
    rounds = Rounds(chain)
    weight = torch.nn.Parameter(torch.zeros(3))
    rounds.attach([weight], num_params=1)
    assert rounds.update_of([torch.ones(3)]) is not rounds._delta_buffers and rounds._delta_buffers == []
