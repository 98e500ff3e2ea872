"""A sent module's memory is handed to the worker when nothing else of the sender reaches it, else copied
(lightning_fed/pointers/handover.py).

The oracle for the attacks is the copy semantics: whatever the sender still holds (a name, an alias, a view, a NumPy
array, shared memory) must not see what the worker does, and must not change what the worker holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_fed as sy
from lightning_fed.pointers.handover import handed_over, sole_grad, unshared_memory
from lightning_fed.workers import VirtualWorker
from lightning_fed.workers.outbox import DROPPED, SNAPSHOTS
from tests.pointers.test_deferred_grads import at_worker, delivery, trained_model


def train_at_worker(model: nn.Module, worker: VirtualWorker, steps: int = 2) -> None:
    """Steps at the worker that write every parameter and gradient in place (no zero_grad: gradients accumulate)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        x = sy.send(torch.randn(4, model.in_features), worker)
        y = sy.send(torch.tensor([0, 1, 1, 0]), worker)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_the_seed_loop_hands_memory_over_and_copies_nothing(alice: VirtualWorker) -> None:
    SNAPSHOTS.clear()
    model = trained_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weight, grad = model.weight.data_ptr(), model.weight.grad.data_ptr()
    for _ in range(3):
        sy.send(model, alice)
        assert at_worker(model.weight).data_ptr() == weight  # the same memory, not a copy
        assert delivery(model.weight).grad.data_ptr() == grad and not delivery(model.weight).pooled
        opt.zero_grad()  # dropped unseen: freed, not kept in the pool
        assert delivery(model.weight).state == DROPPED
        x, y = sy.send(torch.randn(4, 3), alice), sy.send(torch.tensor([0, 1, 1, 0]), alice)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sy.get(model)
        assert model.weight.data_ptr() == weight
        grad = model.weight.grad.data_ptr()  # made at the worker by backward(), now the sender's
    assert SNAPSHOTS._bytes == 0


def test_a_buffer_is_handed_over_too(alice: VirtualWorker) -> None:
    bn = nn.BatchNorm1d(3)
    before = bn.running_mean.data_ptr()
    sy.send(bn, alice)
    assert at_worker(bn.running_mean).data_ptr() == before
    sy.get(bn)
    assert bn.running_mean.data_ptr() == before


ALIASES = {
    ".data": lambda m: m.weight.data,
    "detach()": lambda m: m.weight.detach(),
    "a detached row": lambda m: m.weight.detach()[0],
}


@pytest.mark.parametrize("alias", list(ALIASES), ids=list(ALIASES))
def test_an_alias_the_sender_keeps_sees_nothing_of_the_worker(alice: VirtualWorker, alias: str) -> None:
    model = trained_model()
    kept = ALIASES[alias](model)
    before = kept.clone()
    sy.send(model, alice)
    assert at_worker(model.weight).untyped_storage().data_ptr() != kept.untyped_storage().data_ptr()
    train_at_worker(model, alice)
    assert torch.equal(kept, before)  # the worker's steps did not show through the alias
    kept.add_(100.0)  # nor does the sender's write reach the worker
    assert at_worker(model.weight).abs().max() < 50
    sy.get(model)
    assert model.weight.abs().max() < 50


def test_a_view_of_a_parameter_still_stops_the_send_and_leaves_nothing_behind(alice: VirtualWorker) -> None:
    model = trained_model()
    row = model.weight[0]  # a view in the graph keeps the parameter itself: swap_tensors refuses it
    before = model.weight.detach().clone()
    with pytest.raises(sy.PointerError, match="cannot move module tensor 'weight'"):
        sy.send(model, alice)
    assert type(model.weight) is nn.Parameter and torch.equal(model.weight.detach(), before)
    assert not alice._store.objects and torch.equal(row.detach(), before[0])


def test_memory_torch_did_not_allocate_is_copied(alice: VirtualWorker) -> None:
    array = np.zeros((2, 3), dtype=np.float32)
    model = nn.Linear(3, 2)
    model.weight = nn.Parameter(torch.from_numpy(array))  # the array still reaches this memory
    shared = nn.Linear(3, 2)
    shared.share_memory()  # another process may map this memory
    shared_before = shared.weight.detach().clone()
    for m in (model, shared):
        sy.send(m, alice)
        train_at_worker(m, alice)
    assert not array.any()
    assert torch.equal(torch.from_numpy(array), torch.zeros(2, 3))
    assert not at_worker(shared.weight).is_shared()
    sy.get(shared)
    assert not torch.equal(shared.weight.detach(), shared_before)  # trained at the worker, and home


@pytest.mark.parametrize("holder", ["name", "list", "view"])
def test_a_gradient_the_sender_holds_is_copied(alice: VirtualWorker, holder: str) -> None:
    model = trained_model()
    g = model.weight.grad
    kept = {"name": g, "list": [g], "view": g.view(-1)}[holder]
    del g
    before = model.weight.grad.clone()
    sy.send(model, alice)
    assert delivery(model.weight).pooled  # copied into the pool's memory, not handed over
    train_at_worker(model, alice)  # accumulates into the worker's gradient in place
    local = kept[0] if holder == "list" else kept
    assert torch.equal(local.view_as(before), before)
    sy.get(model)
    assert not torch.equal(model.weight.grad, before)


def test_the_checks_refuse_what_they_cannot_vouch_for() -> None:
    assert not unshared_memory(torch.zeros(3).to_sparse())
    param = nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3, requires_grad=True)  # part of a graph: copied
    assert sole_grad(param) is None
    param.grad = None
    assert sole_grad(param) is None
    lazy = nn.parameter.UninitializedParameter()  # a Parameter subclass: copied
    assert not unshared_memory(lazy)
    t = torch.arange(3.0)
    moved = handed_over(t)
    assert moved.data_ptr() == t.data_ptr() and moved is not t and not moved.requires_grad


def test_training_through_handed_over_memory_equals_plain_training(alice: VirtualWorker) -> None:
    bob = VirtualWorker(id="bob")
    torch.manual_seed(0)
    fed, plain = nn.Linear(3, 2), nn.Linear(3, 2)
    plain.load_state_dict(fed.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fed, plain)]
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(6)]
    for i, (x, y) in enumerate(batches):
        worker = (alice, bob)[i % 2]
        sy.send(fed, worker)
        for model, opt, (xb, yb) in (
            (fed, opts[0], (sy.send(x, worker), sy.send(y, worker))),
            (plain, opts[1], (x, y)),
        ):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        sy.get(fed)
    for a, b in zip(fed.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def graph_leaves(root: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors an autograd graph holds (its ``AccumulateGrad`` nodes' variables), as a worker can reach
    them through a result it keeps."""
    found, todo, seen = [], [root.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):
            found.append(node.variable)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


def test_the_seed_loop_that_keeps_its_loss_hands_memory_over_at_every_send(alice: VirtualWorker) -> None:
    # the seed's loop keeps `loss` (a pointer) until the next batch: its graph at the worker holds the parameters
    bob = VirtualWorker(id="bob")
    SNAPSHOTS.clear()
    model = trained_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        weight, grad = model.weight.data_ptr(), model.weight.grad.data_ptr()
        sy.send(model, (alice, bob)[step % 2])
        assert at_worker(model.weight).data_ptr() == weight, f"step {step}: the parameter was copied"
        assert delivery(model.weight).grad.data_ptr() == grad, f"step {step}: the gradient was copied"
        opt.zero_grad()
        x, y = (
            sy.send(torch.randn(4, 3), model.weight.location),
            sy.send(torch.tensor([0, 1, 1, 0]), model.weight.location),
        )
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sy.get(model)
        assert loss.location._store.objects[loss.id_at_location].grad_fn is not None  # the graph is still there
    assert SNAPSHOTS._bytes == 0


def test_the_graph_a_worker_keeps_sees_nothing_the_sender_writes_after_get(alice: VirtualWorker) -> None:
    model = nn.Linear(3, 2)
    sy.send(model, alice)
    x, y = sy.send(torch.randn(4, 3), alice), sy.send(torch.tensor([0, 1, 1, 0]), alice)
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)  # the worker's graph can run again
    assert sorted(t.numel() for t in graph_leaves(at_worker(loss))) == [2, 6]  # the worker reaches its parameters
    sy.get(model)
    with torch.no_grad():
        model.weight.fill_(7.0)
        model.weight.grad.fill_(7.0)
    held = graph_leaves(at_worker(loss))  # looked up after the get, as the worker would
    assert len(held) == 2 and all(t.numel() == 0 and t.grad is None for t in held)  # nothing of the sender's memory
    before = model.weight.grad.clone()
    with pytest.raises(
        Exception, match=r"failed to run torch\.Tensor\.backward.*size of tensor"
    ):  # fails, writes nothing
        loss.backward()
    assert torch.equal(model.weight.grad, before)


def test_a_parameter_the_worker_still_names_keeps_its_memory_and_the_next_send_copies(alice: VirtualWorker) -> None:
    model = nn.Linear(3, 2)
    sy.send(model, alice)
    peeked = at_worker(model.weight)  # a name for the worker's object, as a PySyft user peeks at bob._objects
    sy.get(model)
    assert peeked.shape == (2, 3) and peeked.data_ptr() == model.weight.data_ptr()  # not let go: it is named
    sy.send(model, alice)
    assert at_worker(model.weight).data_ptr() != peeked.data_ptr()  # shared memory: copied, not handed over
    with torch.no_grad():
        at_worker(model.weight).fill_(3.0)
    assert not (peeked == 3.0).any()
