"""Tests of ``BaseWorker``/``VirtualWorker``: construction, the dispatch table, handlers, commands and plans."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.workers import BaseWorker, LocalWorker, VirtualWorker, current_worker, me
from lightning_fed.workers.messages import (
    CommandMessage,
    DeleteMessage,
    GetMessage,
    MoveMessage,
    ObjectMessage,
    ObjectRef,
    PlanMessage,
    TensorDescriptor,
)


@pytest.fixture
def alice() -> VirtualWorker:
    return VirtualWorker(id="alice")


def put(worker: BaseWorker, obj_id: int, obj: object) -> None:
    me._send(ObjectMessage(obj_id, obj), worker)


def snapshot(worker: BaseWorker) -> dict[int, torch.Tensor]:
    return {k: v.detach().clone() for k, v in worker.objects.items()}


def assert_store_is(worker: BaseWorker, expected: dict[int, torch.Tensor]) -> None:
    assert set(worker.objects) == set(expected)
    for key, value in expected.items():
        assert torch.equal(worker.objects[key], value), key


# -- construction ----------------------------------------------------------------------------------------------------
def test_worker_id_none_is_refused() -> None:
    with pytest.raises(FederatedConfigError, match=r"VirtualWorker needs an `id`, got id=None.*id='alice'"):
        VirtualWorker(id=None)
    with pytest.raises(FederatedConfigError, match=r"VirtualWorker needs an `id`, got id=None"):
        VirtualWorker()


@pytest.mark.parametrize("bad", [1.5, True, ["a"], ("a",)])
def test_worker_id_must_be_str_or_int(bad: object) -> None:
    with pytest.raises(FederatedConfigError, match=r"`id` must be a string or an int, got id=.*pass a name such as"):
        VirtualWorker(id=bad)


@pytest.mark.parametrize("hook", ["hook", 3, object()])
def test_bad_hook_argument_is_refused(hook: object) -> None:
    with pytest.raises(FederatedConfigError, match=r"`hook` must be a lightning_fed.TorchHook or None, got hook="):
        VirtualWorker(hook, id="bob")


def test_config_errors_are_value_errors_and_misconfiguration() -> None:
    with pytest.raises(ValueError, match="needs an `id`"):
        VirtualWorker(id=None)
    with pytest.raises(MisconfigurationException, match="needs an `id`"):
        VirtualWorker(id=None)


def test_int_ids_and_no_hook() -> None:
    worker = VirtualWorker(id=3)
    assert worker.id == 3
    assert worker.hook is None
    assert worker.objects == {}


def test_without_a_hook_ids_need_not_be_unique() -> None:
    a, b = VirtualWorker(id="same"), VirtualWorker(id="same")
    put(a, 1, torch.tensor(1))
    assert a is not b
    assert b.objects == {}


def test_repr_and_objects_views(alice: VirtualWorker) -> None:
    assert repr(alice) == "<VirtualWorker id:alice #objects:0>"
    put(alice, 5, torch.tensor([1]))
    assert repr(alice) == "<VirtualWorker id:alice #objects:1>"
    assert alice._objects is alice.objects
    assert list(alice._objects) == [5]
    alice.clear_objects()
    assert alice.objects == {}


def test_me_is_the_local_worker() -> None:
    assert isinstance(me, LocalWorker)
    assert me.id == "me"
    assert sy.me is me
    assert sy.local_worker is me


def test_base_worker_has_no_transport(alice: VirtualWorker) -> None:
    base = BaseWorker(id="base")
    with pytest.raises(NotImplementedError):
        base._send(GetMessage(1), alice)


# -- dispatch --------------------------------------------------------------------------------------------------------
def test_unknown_message_types_are_refused(alice: VirtualWorker) -> None:
    class Evil:
        pass

    with pytest.raises(WorkerError, match=r"worker 'alice' does not understand a Evil"):
        me._send(Evil(), alice)
    with pytest.raises(WorkerError, match=r"worker 'alice' does not understand a str"):
        me._send("torch.add", alice)
    assert alice.objects == {}


def test_object_then_get_hands_the_object_back(alice: VirtualWorker) -> None:
    value = torch.tensor([1.0, 2.0])
    put(alice, 10, value)
    assert alice.objects[10] is value  # VirtualWorker pickles nothing
    back = me._send(GetMessage(10), alice)
    assert back is value
    assert alice.objects == {}


def test_a_command_runs_under_the_autograd_mode_it_carries(alice: VirtualWorker) -> None:
    put(alice, 10, torch.ones(2, requires_grad=True))
    step = CommandMessage("torch.Tensor.add_", (ObjectRef(10), 1.0), {}, grad_enabled=False)
    me._send(step, alice)  # an optimizer's in-place step on a leaf: allowed under no_grad, as it ran at the sender
    assert alice.objects[10].tolist() == [2.0, 2.0] and torch.is_grad_enabled()
    with pytest.raises(WorkerError, match="leaf Variable that requires grad"):
        me._send(CommandMessage("torch.Tensor.add_", (ObjectRef(10), 1.0), {}, grad_enabled=True), alice)
    with torch.no_grad():
        me._send(CommandMessage("torch.mul", (ObjectRef(10), 2.0), {}, grad_enabled=True), alice)
    product = max(alice.objects)
    assert alice.objects[product].requires_grad  # recorded: the message's mode, not the thread's
    me._send(CommandMessage("torch.mul", (ObjectRef(10), 2.0)), alice)  # None: the sender's thread's mode
    assert alice.objects[max(alice.objects)].requires_grad


def test_get_keep_hands_a_copy_and_keeps_the_object(alice: VirtualWorker) -> None:
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    put(alice, 10, value)
    copy = me._send(GetMessage(10, keep=True), alice)
    assert copy is not value
    assert copy.requires_grad
    assert torch.equal(copy, value)
    with torch.no_grad():
        copy.add_(1)
    assert torch.equal(alice.objects[10], torch.tensor([1.0, 2.0]))


def test_get_of_an_unknown_id_names_worker_and_id(alice: VirtualWorker) -> None:
    with pytest.raises(WorkerError, match=r"worker 'alice' holds no object 99: it never existed here\.$"):
        me._send(GetMessage(99), alice)


@pytest.mark.parametrize(
    ("leave", "match"),
    [
        (lambda w: me._send(GetMessage(1), w), r"it left through \.get\(\) earlier \(a \.get\(\) takes the object out "
         r"of the worker; use \.copy\(\)\.get\(\) to keep it there\)"),
        (lambda w: me._send(DeleteMessage(1), w), r"it was deleted \(its pointer was dropped or ptr\.delete\(\) ran\)"),
        (lambda w: me._send(MoveMessage(1, VirtualWorker(id="carol"), 2), w), r"it was moved to worker 'carol' with "
         r"\.move\(\)"),
        (lambda w: w.clear_objects(), r"it was deleted with the worker's other objects \(clear_objects\(\)\)"),
    ],
)  # fmt: skip
def test_a_missing_object_says_how_it_left(alice: VirtualWorker, leave: Any, match: str) -> None:
    put(alice, 1, torch.ones(2))
    leave(alice)
    for message in (GetMessage(1), MoveMessage(1, VirtualWorker(id="dave"), 3),
                    CommandMessage("torch.neg", (ObjectRef(1),))):  # fmt: skip
        with pytest.raises(WorkerError, match=r"worker 'alice' holds no object 1: " + match):
            me._send(message, alice)


def test_departures_are_remembered_for_a_bounded_number_of_objects() -> None:
    from lightning_fed.workers.store import ObjectStore

    store = ObjectStore(max_departed=3)
    for obj_id in range(5):
        store.set(obj_id, obj_id)
        store.depart(obj_id, "get")
    assert list(store.departed) == [2, 3, 4]
    assert store.why_missing(4).startswith("it left through .get()")
    assert store.why_missing(0) == "it never existed here (or it left before the last 3 that did)"
    store.depart(4, "delete")  # a pointer dropped after its object left keeps the first reason
    assert store.why_missing(4).startswith("it left through .get()")


def test_delete_forgets_and_ignores_unknown_ids(alice: VirtualWorker) -> None:
    put(alice, 1, torch.tensor(1))
    me._send(DeleteMessage(2), alice)
    assert list(alice.objects) == [1]
    me._send(DeleteMessage(1), alice)
    assert alice.objects == {}


def test_move_hands_the_object_to_another_worker(alice: VirtualWorker) -> None:
    bob = VirtualWorker(id="bob")
    value = torch.tensor([4, 5])
    put(alice, 1, value)
    me._send(MoveMessage(1, bob, 77), alice)
    assert alice.objects == {}
    assert bob.objects == {77: value}


def test_move_of_an_unknown_id_names_worker_and_id(alice: VirtualWorker) -> None:
    with pytest.raises(WorkerError, match=r"worker 'alice' holds no object 5: it never existed here"):
        me._send(MoveMessage(5, VirtualWorker(id="bob"), 6), alice)


# -- commands --------------------------------------------------------------------------------------------------------
def test_command_on_an_unknown_id_names_worker_and_id(alice: VirtualWorker) -> None:
    put(alice, 1, torch.ones(2))
    with pytest.raises(WorkerError, match=r"worker 'alice' holds no object 2: it never existed here"):
        me._send(CommandMessage("torch.add", (ObjectRef(1), ObjectRef(2))), alice)
    assert list(alice.objects) == [1]


def test_failing_command_names_worker_and_command_and_leaves_the_store(alice: VirtualWorker) -> None:
    put(alice, 1, torch.ones(2, 3))
    put(alice, 2, torch.ones(2, 3))
    before = snapshot(alice)
    with pytest.raises(
        WorkerError, match=r"worker 'alice' failed to run torch.matmul: RuntimeError: .*2x3 and 2x3"
    ) as e:
        me._send(CommandMessage("torch.matmul", (ObjectRef(1), ObjectRef(2))), alice)
    assert isinstance(e.value.__cause__, RuntimeError)
    assert_store_is(alice, before)


def test_in_place_command_returns_a_reference_to_its_input(alice: VirtualWorker) -> None:
    value = torch.tensor([1.0, 2.0])
    put(alice, 1, value)
    answer = me._send(CommandMessage("torch.Tensor.add_", (ObjectRef(1), 1)), alice)
    assert answer == ObjectRef(1)
    assert list(alice.objects) == [1]
    assert alice.objects[1] is value
    assert torch.equal(value, torch.tensor([2.0, 3.0]))


def test_non_tensor_results_come_back_as_plain_values(alice: VirtualWorker) -> None:
    put(alice, 1, torch.ones(2, 3))
    assert me._send(CommandMessage("torch.Tensor.dim", (ObjectRef(1),)), alice) == 2
    assert me._send(CommandMessage("torch.Tensor.size", (ObjectRef(1),)), alice) == torch.Size([2, 3])
    assert list(alice.objects) == [1]


def test_tuple_results_are_stored_one_by_one(alice: VirtualWorker) -> None:
    put(alice, 1, torch.arange(6.0))
    answer = me._send(CommandMessage("torch.chunk", (ObjectRef(1), 3)), alice)
    assert type(answer) is tuple
    assert len(answer) == 3
    assert all(isinstance(d, TensorDescriptor) for d in answer)
    assert torch.equal(alice.objects[answer[2].obj_id], torch.tensor([4.0, 5.0]))
    assert len(alice.objects) == 4


def test_structseq_results_are_stored_not_leaked(alice: VirtualWorker) -> None:
    # Regression: torch.return_types.* (max, sort, topk...) came back holding the worker's real tensors.
    put(alice, 1, torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]))
    answer = me._send(CommandMessage("torch.max", (ObjectRef(1),), {"dim": 1}), alice)
    assert type(answer) is torch.return_types.max
    assert isinstance(answer.values, TensorDescriptor)
    assert isinstance(answer.indices, TensorDescriptor)
    assert torch.equal(alice.objects[answer.values.obj_id], torch.tensor([5.0, 7.0]))
    assert torch.equal(alice.objects[answer.indices.obj_id], torch.tensor([1, 0]))


def test_requires_grad_is_reported_in_the_descriptor(alice: VirtualWorker) -> None:
    put(alice, 1, torch.ones(2, requires_grad=True))
    desc = me._send(CommandMessage("torch.mul", (ObjectRef(1), 2)), alice)
    assert desc.requires_grad is True
    assert alice.objects[desc.obj_id].grad_fn is not None


def test_current_worker_is_set_only_while_a_command_runs(alice: VirtualWorker) -> None:
    seen: list[object] = []
    alice.install_plan("probe", lambda: seen.append(current_worker()))
    assert current_worker() is None
    me._send(PlanMessage("probe", ()), alice)
    assert seen == [alice]
    assert current_worker() is None


# -- plans -----------------------------------------------------------------------------------------------------------
def test_plan_runs_with_resolved_objects_and_stores_its_result(alice: VirtualWorker) -> None:
    received: list[object] = []

    def scale(x: torch.Tensor, factor: float, *, shift: torch.Tensor) -> torch.Tensor:
        received.extend([x, shift])
        return x * factor + shift

    a, b = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 10.0])
    put(alice, 1, a)
    put(alice, 2, b)
    alice.install_plan("scale", scale)
    desc = me._send(PlanMessage("scale", (ObjectRef(1), 3.0), {"shift": ObjectRef(2)}), alice)
    assert received[0] is a
    assert received[1] is b
    assert isinstance(desc, TensorDescriptor)
    assert torch.equal(alice.objects[desc.obj_id], torch.tensor([13.0, 16.0]))


def test_plan_resolves_refs_nested_in_lists_and_dicts(alice: VirtualWorker) -> None:
    put(alice, 1, torch.tensor(1.0))
    put(alice, 2, torch.tensor(2.0))
    alice.install_plan("total", lambda xs, d: xs[0] + xs[1] + d["k"])
    desc = me._send(PlanMessage("total", ([ObjectRef(1), ObjectRef(2)], {"k": ObjectRef(2)})), alice)
    assert alice.objects[desc.obj_id].item() == 5.0


def test_unknown_plan_is_refused_with_the_installed_names(alice: VirtualWorker) -> None:
    alice.install_plan("train_step", lambda: None)
    with pytest.raises(
        WorkerError, match=r"worker 'alice' has no plan named 'steal'; installed plans: \['train_step'\]"
    ):
        me._send(PlanMessage("steal", ()), alice)


def test_remove_plan(alice: VirtualWorker) -> None:
    alice.install_plan("p", lambda: 1)
    assert me._send(PlanMessage("p", ()), alice) == 1
    alice.remove_plan("p")
    alice.remove_plan("never-installed")
    with pytest.raises(WorkerError, match=r"has no plan named 'p'; installed plans: \[\]"):
        me._send(PlanMessage("p", ()), alice)


def test_failing_plan_names_worker_and_plan(alice: VirtualWorker) -> None:
    def boom() -> None:
        raise ValueError("bad batch")

    alice.install_plan("boom", boom)
    with pytest.raises(WorkerError, match=r"worker 'alice' failed to run plan 'boom': ValueError: bad batch"):
        me._send(PlanMessage("boom", ()), alice)


def test_worker_errors_inside_a_plan_pass_through_unwrapped(alice: VirtualWorker) -> None:
    def inner() -> None:
        raise WorkerError("worker 'alice' inner failure")

    alice.install_plan("inner", inner)
    with pytest.raises(WorkerError, match=r"^worker 'alice' inner failure$"):
        me._send(PlanMessage("inner", ()), alice)


def test_a_workers_store_is_shown_under_pysyfts_names():
    import torch

    import lightning_fed as sy

    bob = sy.VirtualWorker(id="bob-tensors")
    ptr = sy.send(torch.tensor([1.0, 2.0]), bob)
    assert list(bob._tensors) == list(bob._objects) == [ptr.id_at_location]  # Part 09 prints bob._tensors
