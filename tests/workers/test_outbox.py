"""The worker's side of gradients kept aside (lightning_fed/workers/outbox.py), driven by raw messages.

Each test sends a parameter and its gradient (``DeferredGradMessage``), then one message, and checks whether the
worker attached the gradient first (it must whenever the message could see it) or left it aside.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.messages import (
    CommandMessage,
    DeferredGradMessage,
    DeleteMessage,
    GetMessage,
    ObjectMessage,
    ObjectRef,
    PlanMessage,
)
from lightning_fed.workers.outbox import DELIVERED, DROPPED, PENDING, GradOutbox, SnapshotPool

PARAM, OTHER, NAME = 11, 12, 13


@pytest.fixture
def bob() -> VirtualWorker:
    worker = VirtualWorker(id="bob")
    me._send(ObjectMessage(PARAM, nn.Parameter(torch.ones(3))), worker)
    return worker


def keep_aside(worker: VirtualWorker, values: torch.Tensor | None = None) -> object:
    grad = torch.full((3,), 5.0) if values is None else values
    return me._send(DeferredGradMessage(PARAM, grad), worker)


def attached(worker: VirtualWorker) -> torch.Tensor | None:
    return worker._store.objects[PARAM].grad


def test_commands_on_tensors_that_require_no_grad_leave_it_aside(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    me._send(ObjectMessage(OTHER, torch.arange(3.0)), bob)
    me._send(CommandMessage("torch.mul", (ObjectRef(OTHER), 2.0)), bob)
    assert delivery.state == PENDING and attached(bob) is None


def test_a_command_on_any_tensor_that_requires_grad_attaches_it(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    me._send(ObjectMessage(OTHER, torch.zeros(3, requires_grad=True)), bob)
    me._send(CommandMessage("torch.mul", (ObjectRef(OTHER), 2.0)), bob)
    assert delivery.state == DELIVERED and torch.equal(attached(bob), torch.full((3,), 5.0))


def test_a_keyword_argument_counts_as_much_as_a_positional_one(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    me._send(ObjectMessage(OTHER, torch.arange(3.0)), bob)
    me._send(CommandMessage("torch.add", (ObjectRef(OTHER),), {"other": ObjectRef(PARAM)}), bob)
    assert delivery.state == DELIVERED


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(GetMessage(OTHER, keep=True), id="get of another object"),
        pytest.param(PlanMessage("echo", (ObjectRef(OTHER),)), id="plan"),
    ],
)
def test_other_kinds_of_message_attach_it_first(bob: VirtualWorker, message: object) -> None:
    bob.install_plan("echo", lambda t: t)
    delivery = keep_aside(bob)
    me._send(ObjectMessage(OTHER, torch.arange(3.0)), bob)
    me._send(message, bob)
    assert delivery.state == DELIVERED and attached(bob) is not None


def test_unsetting_an_unnamed_gradient_drops_it(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    me._send(CommandMessage("torch.Tensor.grad.__set__", (ObjectRef(PARAM), None)), bob)
    assert delivery.state == DROPPED and attached(bob) is None and not bob._grad_outbox


def test_unsetting_a_named_gradient_keeps_it_under_its_name(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    delivery.name(NAME)
    me._send(CommandMessage("torch.Tensor.grad.__set__", (ObjectRef(PARAM), None)), bob)
    assert attached(bob) is None and torch.equal(bob._store.objects[NAME], torch.full((3,), 5.0))


def test_deleting_the_name_unnames_it(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    delivery.name(NAME)
    me._send(DeleteMessage(NAME), bob)
    assert delivery.grad_id is None and delivery.state == PENDING
    delivery.drop()
    assert delivery.state == DROPPED


def test_deleting_the_parameter_leaves_a_named_gradient_labelled_as_its_parameter() -> None:
    clinic = VirtualWorker(id="clinic", policy=DataAccessPolicy(release_model=False))
    me._send(ObjectMessage(PARAM, nn.Parameter(torch.ones(3))), clinic)
    delivery = me._send(DeferredGradMessage(PARAM, torch.full((3,), 5.0)), clinic)
    delivery.name(NAME)
    me._send(DeleteMessage(PARAM), clinic)
    assert delivery.state == DELIVERED and PARAM not in clinic._store.objects
    grad = clinic._store.objects[NAME]
    assert clinic._guard.labels.of(NAME, grad) == clinic._guard.labels.of(None, nn.Parameter(torch.ones(1))) | 2


def test_a_handle_refuses_what_its_state_forbids(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    delivery.name(NAME)
    with pytest.raises(RuntimeError, match=r"gradient of object 11 is pending or named: it cannot be dropped"):
        delivery.drop()
    _ = bob.objects  # a look at the store attaches it
    with pytest.raises(RuntimeError, match=r"gradient of object 11 was already delivered"):
        delivery.name(NAME + 1)


def test_storing_the_same_id_again_drops_the_first_gradient() -> None:
    outbox = GradOutbox()
    first = outbox.add(PARAM, torch.ones(2))
    second = outbox.add(PARAM, torch.zeros(2))
    assert first.state == DROPPED and second.state == PENDING and len(outbox.by_param) == 1


def test_the_pool_keeps_no_more_than_its_bytes() -> None:
    pool = SnapshotPool(max_bytes=16)  # four float32s
    a, b = torch.zeros(4), torch.zeros(4)
    pool.give(a)
    pool.give(b)  # over the cap: not kept
    assert pool.copy_of(torch.ones(4)) is a
    assert pool.copy_of(torch.ones(4)) is not b
    assert pool.copy_of(torch.ones(2, 2)).shape == (2, 2)  # another shape: a fresh copy


def test_a_worker_placed_in_another_process_takes_its_gradients_along(bob: VirtualWorker) -> None:
    delivery = keep_aside(bob)
    bob.place_elsewhere("bob runs in process 1 now")
    assert delivery.state == DELIVERED and torch.equal(attached(bob), torch.full((3,), 5.0))
    bob.place_elsewhere(None)
