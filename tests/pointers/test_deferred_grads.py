"""Tests of a module's gradients kept aside at the worker (lightning_fed/workers/outbox.py, pointers/grads.py).

The oracle is the eager path: everything a user or the worker can observe must be what it would be had each gradient
been attached to its parameter on arrival. The worker's store is peeked at through ``_store.objects`` (which, unlike
``worker.objects``, does not attach kept gradients first).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_fed as sy
from lightning_fed.exceptions import PermissionDeniedError
from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.workers import VirtualWorker
from lightning_fed.workers.outbox import DELIVERED, DROPPED, PENDING, SNAPSHOTS
from tests.pointers.test_grads import Counter


def trained_model(seed: int = 0) -> nn.Linear:
    """A small model whose parameters carry gradients, as after ``model.get()`` in the seed's loop."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 1, 0])).backward()
    return model


def at_worker(ptr: torch.Tensor) -> torch.Tensor:
    return ptr.location._store.objects[ptr.id_at_location]


def delivery(ptr: torch.Tensor) -> object:
    return ptr.__dict__["_grad_delivery"]


def test_the_gradient_waits_aside_and_reads_back_equal(alice: VirtualWorker) -> None:
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, alice)
    assert at_worker(model.weight).grad is None and delivery(model.weight).state == PENDING
    with Counter(alice) as counts:
        g = model.weight.grad
        assert model.weight.grad is g  # as for a local tensor
    assert sum(counts.values()) == 0  # answered by the pointer
    assert torch.equal(g.get(), sent)  # the get attaches it first, then hands it back
    assert torch.equal(at_worker(model.weight).grad, sent)


def test_a_later_change_to_the_local_gradient_does_not_reach_the_worker(alice: VirtualWorker) -> None:
    model = trained_model()
    alias = model.weight.grad  # the user's own reference to the gradient that is sent
    sent = alias.clone()
    sy.send(model, alice)
    alias.add_(100.0)
    assert torch.equal(alice.objects[model.weight.id_at_location].grad, sent)


def test_backward_without_zero_grad_accumulates_onto_the_sent_gradient(alice: VirtualWorker) -> None:
    fed, plain = trained_model(), trained_model()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    sy.send(fed, alice)
    F.cross_entropy(fed(sy.send(x, alice)), sy.send(y, alice)).backward()
    sy.get(fed)
    F.cross_entropy(plain(x), y).backward()
    for a, b in zip(fed.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad)


def test_zero_grad_after_send_drops_the_gradient_unseen(alice: VirtualWorker) -> None:
    model = trained_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sy.send(model, alice)
    deliveries = [delivery(p) for p in model.parameters()]
    with Counter(alice) as counts:
        opt.zero_grad()
    assert set(counts) <= {"DeleteMessage"}  # the kept pointers zero_grad read, dropped; no command
    assert [d.state for d in deliveries] == [DROPPED, DROPPED]
    assert all(at_worker(p).grad is None for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert set(alice.objects) == {p.id_at_location for p in model.parameters()}


def test_a_gradient_the_user_kept_survives_being_unset(alice: VirtualWorker) -> None:
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, alice)
    g = model.weight.grad
    model.weight.grad = None
    assert model.weight.grad is None and at_worker(model.weight).grad is None
    assert torch.equal(g.get(), sent)  # as eagerly: g still names the gradient object


def test_data_commands_leave_it_aside_and_a_command_on_the_parameter_attaches_it(alice: VirtualWorker) -> None:
    model = trained_model()
    sent = model.bias.grad.clone()
    data = sy.send(torch.randn(2, 3), alice)
    sy.send(model, alice)
    moved = data.to(torch.device("cpu"))
    assert moved is data and delivery(model.bias).state == PENDING  # requires no grad: cannot reach a gradient
    doubled = model.bias * 2
    assert delivery(model.bias).state == DELIVERED and torch.equal(at_worker(model.bias).grad, sent)
    assert torch.equal(doubled.get(), model.bias.get() * 2)


@pytest.mark.parametrize(
    "look",
    [
        pytest.param(lambda w, p: w.objects[p.id_at_location].grad, id="worker.objects"),
        pytest.param(lambda w, p: w._objects[p.id_at_location].grad, id="worker._objects"),
        pytest.param(lambda w, p: sy.get(p).grad, id="get"),
    ],
)
def test_every_look_at_the_parameter_finds_its_gradient(alice: VirtualWorker, look: object) -> None:
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, alice)
    assert torch.equal(look(alice, model.weight), sent)


def test_a_session_at_the_worker_finds_the_gradient(alice: VirtualWorker) -> None:
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, alice)
    with alice.session(model.weight) as real:
        assert torch.equal(real.grad, sent)


def test_a_move_carries_the_gradient(alice: VirtualWorker) -> None:
    bob = VirtualWorker(id="bob")
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, alice)
    model.weight.move(bob)
    assert torch.equal(bob._store.objects[model.weight.id_at_location].grad, sent)
    assert not alice._grad_outbox


def test_dropping_the_parameter_pointer_drops_its_gradient(alice: VirtualWorker) -> None:
    model = trained_model()
    sy.send(model, alice)
    d = delivery(model.weight)
    del model.weight  # the module's only reference: the pointer goes, and its object
    assert d.state == DROPPED and d.param_id not in alice._store.objects


def test_clear_objects_forgets_kept_gradients(alice: VirtualWorker) -> None:
    model = trained_model()
    sy.send(model, alice)
    alice.clear_objects()
    assert not alice._grad_outbox and delivery(model.weight).state == DROPPED


def test_the_delivered_gradient_carries_its_parameters_label(alice: VirtualWorker) -> None:
    clinic = VirtualWorker(id="clinic", policy=DataAccessPolicy(release_model=False))
    model = trained_model()
    sy.send(model, clinic)
    g = model.weight.grad  # kept aside: the get attaches it, labelled as a model update, then refuses
    with pytest.raises(PermissionDeniedError, match="refuses to release"):
        g.get()
    assert delivery(model.weight).state == DELIVERED


def test_only_memory_no_worker_saw_is_reused(alice: VirtualWorker) -> None:
    SNAPSHOTS.clear()
    model = trained_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    held = model.weight.grad  # a name holds each gradient sent below: the sends copy them (pointers/handover.py)
    sy.send(model, alice)
    first = delivery(model.weight).grad.data_ptr()
    assert first != held.data_ptr()
    opt.zero_grad()  # dropped unseen: its buffer is kept for the next send
    sy.get(model)
    model.weight.grad = held = torch.ones_like(model.weight)
    sy.send(model, alice)
    assert delivery(model.weight).grad.data_ptr() == first
    g = model.weight.grad
    delivered = at_worker(model.weight)
    _ = model.weight * 1  # attached: this memory is the worker's now
    assert delivered.grad.data_ptr() == first and torch.equal(g.get(), torch.ones(2, 3))
    sy.get(model)
    model.weight.grad = held = torch.zeros_like(model.weight)
    sy.send(model, alice)  # a fresh buffer, not the one the worker was given
    assert delivery(model.weight).grad.data_ptr() not in (first, held.data_ptr())


def test_sparse_and_graph_gradients_travel_attached(alice: VirtualWorker) -> None:
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 3])).sum().backward()
    sy.send(emb, alice)
    assert "_grad_delivery" not in emb.weight.__dict__ and at_worker(emb.weight).grad.is_sparse


def test_training_matches_plain_pytorch_exactly(alice: VirtualWorker) -> None:
    bob = VirtualWorker(id="bob")
    fed, plain = trained_model(1), trained_model(1)
    fed_opt = torch.optim.SGD(fed.parameters(), lr=0.1, momentum=0.9)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(4)]
    for i, (x, y) in enumerate(batches):
        worker = (alice, bob)[i % 2]
        sy.send(fed, worker)
        fed_opt.zero_grad()
        F.cross_entropy(fed(sy.send(x, worker)), sy.send(y, worker)).backward()
        fed_opt.step()
        sy.get(fed)
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
    for a, b in zip(fed.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)


class Relay(VirtualWorker):
    """A worker that answers through its own ``_recv`` (as a remote site's proxy does): nothing is kept aside."""

    def _recv(self, message: object) -> object:
        return super()._recv(message)


def test_a_worker_that_answers_elsewhere_gets_the_gradient_attached() -> None:
    relay = Relay(id="relay")
    model = trained_model()
    sent = model.weight.grad.clone()
    sy.send(model, relay)
    assert "_grad_delivery" not in model.weight.__dict__ and not relay._grad_outbox
    assert torch.equal(relay._store.objects[model.weight.id_at_location].grad, sent)
