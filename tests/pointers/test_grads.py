"""Tests of the kept ``.grad`` answer (lightning_fed/pointers/grads.py): fewer messages, never a stale answer.

Every test compares what ``ptr.grad`` gives with the worker's real ``.grad`` after something changed it (another
pointer, a session, ``backward()``, a delete, ``.get()``); the message counts show what is saved.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_fed as sy
from lightning_fed.exceptions import PermissionDeniedError, PointerError, WorkerError
from lightning_fed.pointers import PointerTensor
from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.workers import VirtualWorker
from lightning_fed.workers.epoch import grad_epoch


def remote(ptr: PointerTensor) -> torch.Tensor:
    """The worker's real tensor behind ``ptr`` (test-side peek, not part of the API)."""
    return ptr.location.objects[ptr.id_at_location]


class Counter:
    """Counts the messages ``worker`` receives, by kind (shadowing ``_recv`` on the instance, as the benchmark does)."""

    def __init__(self, worker: VirtualWorker) -> None:
        self.worker = worker
        self.counts: collections.Counter[str] = collections.Counter()
        original = worker._recv

        def counting(message: Any) -> Any:
            name = type(message).__name__
            self.counts[getattr(message, "command", name)] += 1
            return original(message)

        worker._recv = counting

    def __enter__(self) -> collections.Counter[str]:
        return self.counts

    def __exit__(self, *exc: object) -> None:
        del self.worker._recv


@pytest.fixture
def trained(alice: VirtualWorker) -> Iterator[PointerTensor]:
    w = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    (w * sy.send(torch.tensor([3.0, 4.0]), alice)).sum().backward()
    yield w


GET = "torch.Tensor.grad.__get__"


def test_repeated_reads_send_one_message_and_return_the_same_pointer(trained: PointerTensor) -> None:
    with Counter(trained.location) as counts:
        first = trained.grad
        assert trained.grad is first and trained.grad is first
    assert counts == {GET: 1}
    assert torch.equal(first.copy().get(), torch.tensor([3.0, 4.0]))
    assert remote(first) is remote(trained).grad


def test_in_place_update_of_the_grad_shows_through_the_kept_pointer(trained: PointerTensor) -> None:
    g = trained.grad
    g.mul_(2.0)  # in place: the same object at the worker, so the kept pointer is still right
    assert trained.grad is g
    assert torch.equal(trained.grad.copy().get(), torch.tensor([6.0, 8.0]))


def test_assigning_through_another_pointer_is_seen(trained: PointerTensor, alice: VirtualWorker) -> None:
    kept = trained.grad
    other = PointerTensor._make(alice, trained.id_at_location, trained.shape, trained.dtype, trained.device)
    other._frees = False  # a second pointer to the same object (as search() makes)
    other.grad = sy.send(torch.tensor([7.0, 7.0]), alice)
    fresh = trained.grad
    assert fresh is not kept
    assert torch.equal(fresh.copy().get(), torch.tensor([7.0, 7.0]))


def test_a_session_that_replaces_the_grad_is_seen(trained: PointerTensor, alice: VirtualWorker) -> None:
    kept = trained.grad
    with alice.session(trained) as real:
        real.grad = torch.full((2,), 5.0)
    assert trained.grad is not kept
    assert torch.equal(trained.grad.copy().get(), torch.full((2,), 5.0))


def test_backward_after_zeroing_gives_the_new_grad(trained: PointerTensor, alice: VirtualWorker) -> None:
    trained.grad = None
    with Counter(alice) as counts:
        assert trained.grad is None  # known from the assignment itself: no message
    assert counts == {}
    (trained * 10.0).sum().backward()
    assert torch.equal(trained.grad.copy().get(), torch.full((2,), 10.0))
    assert remote(trained.grad) is remote(trained).grad


def test_after_get_the_kept_pointer_is_freed_and_reads_fail(trained: PointerTensor, alice: VirtualWorker) -> None:
    g = trained.grad
    value = trained.get()
    assert torch.equal(value.grad, torch.tensor([3.0, 4.0]))
    del g
    assert alice.objects == {}  # nothing left behind for the kept pointer
    with pytest.raises(PointerError, match="already fetched"):
        trained.grad


def test_after_the_grad_pointer_was_fetched_a_read_asks_again(trained: PointerTensor) -> None:
    g = trained.grad
    assert torch.equal(g.get(), torch.tensor([3.0, 4.0]))
    again = trained.grad
    assert again is not g and again.is_live
    assert torch.equal(again.copy().get(), torch.tensor([3.0, 4.0]))


def test_after_the_worker_deletes_everything_a_read_fails(trained: PointerTensor, alice: VirtualWorker) -> None:
    trained.grad  # read once: the pointer keeps the answer
    alice.clear_objects()
    with pytest.raises(WorkerError, match="holds no object"):
        trained.grad


def test_after_the_grad_object_is_deleted_a_read_registers_it_again(
    trained: PointerTensor, alice: VirtualWorker
) -> None:
    g = trained.grad
    alias = PointerTensor._make(alice, g.id_at_location, g.shape, g.dtype, g.device)
    alias.delete()  # the worker forgets the id the kept pointer names
    fresh = trained.grad
    assert fresh is not g
    assert torch.equal(fresh.copy().get(), torch.tensor([3.0, 4.0]))


def test_workers_that_answer_elsewhere_keep_nothing(alice: VirtualWorker) -> None:
    class Relayed(VirtualWorker):
        def _recv(self, message: Any) -> Any:  # as a RemoteWorker: answered past this process's BaseWorker._recv
            return super()._recv(message)

    far = Relayed(id="far")
    w = sy.send(torch.ones(2, requires_grad=True), far)
    (w * 2.0).sum().backward()
    first = w.grad
    epoch = grad_epoch()
    second = w.grad
    assert grad_epoch() == epoch  # the read itself is neutral...
    assert second is not first  # ...but nothing is kept: `far` answers past BaseWorker._recv


def test_a_placed_elsewhere_worker_is_not_answered_from_the_pointer(trained: PointerTensor) -> None:
    trained.grad
    trained.location.place_elsewhere("the worker runs in process 1")
    with pytest.raises(PointerError, match="process 1"):
        trained.grad
    trained.location.place_elsewhere(None)


def test_a_kept_gradient_is_released_only_as_the_policy_allows() -> None:
    clinic = VirtualWorker(id="clinic", policy=DataAccessPolicy(release_model=False))
    model = sy.send(nn.Linear(2, 1), clinic)  # model parameters: their gradients are model updates
    model(sy.send(torch.tensor([[1.0, 2.0]]), clinic)).sum().backward()
    w = model.weight
    g = w.grad
    assert w.grad is g
    with pytest.raises(PermissionDeniedError, match="refuses to release"):
        w.grad.get()
    with pytest.raises(PermissionDeniedError, match="refuses to release"):
        g.get()


def test_one_sgd_step_reads_each_grad_once_per_phase(alice: VirtualWorker) -> None:
    """SGD's step reads ``p.grad`` three times per parameter; two of them are now answered by the pointer."""
    torch.manual_seed(0)
    model, plain = nn.Linear(3, 2), nn.Linear(3, 2)
    plain.load_state_dict(model.state_dict())
    opt, plain_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(plain.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    xp, yp = sy.send(x, alice), sy.send(y, alice)
    for _ in range(3):
        sy.send(model, alice)
        with Counter(alice) as counts:
            opt.zero_grad()
            F.cross_entropy(model(xp), yp).backward()
            opt.step()
        sy.get(model)
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
    # step's first read, for 2 parameters (was 4 each): zero_grad's read is answered while the gradient that came
    # with the parameter is kept aside at the worker (workers/outbox.py), and its `p.grad = None` drops it there
    assert counts[GET] == 2
    assert counts["torch.Tensor.is_sparse.__get__"] == 0  # SGD's sparse check: answered by the grad pointer
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    assert set(alice.objects) == {xp.id_at_location, yp.id_at_location}  # no kept pointer left behind
