"""Issue 16, attempted as an attacker would: every route out of a worker, with the default (strict) policy.

Each attack is refused with a clear error and recorded in the worker's ``audit_log.refused``, or released by a named
rule. The top part is the pointer/worker layer, organised by route; strategy and checkpoint attacks follow at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed.exceptions import PermissionDeniedError, PointerError, WorkerError
from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.messages import CommandMessage, GetMessage, ObjectRef

SECRET = torch.tensor([[3.0, 1.0, 4.0], [1.0, 5.0, 9.0], [2.0, 6.0, 5.0], [3.0, 5.0, 8.0]])
LABELS = torch.tensor([2, 7, 1, 8])


def clinic(policy: Any = "strict", worker_id: str = "clinic") -> tuple[VirtualWorker, Any, Any, Any]:
    """A worker made the attacker's way (``federate``, default policy), its shard and one batch (data, target)."""
    worker = VirtualWorker(id=worker_id, policy=policy)
    fed = sy.federate(TensorDataset(SECRET.clone(), LABELS.clone()), [worker])
    data, target = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
    return worker, fed, data, target


def refused(worker: VirtualWorker, attack: Callable[[], Any], match: str = r"refuses to release object \d+") -> None:
    """``attack()`` raises PermissionDeniedError naming the worker, and adds one record to ``audit_log.refused``."""
    before = len(worker.audit_log.refused)
    with pytest.raises(PermissionDeniedError, match=rf"worker '{worker.id}' " + match):
        attack()
    assert len(worker.audit_log.refused) == before + 1


# -- route: get / to_here / copy().get() on what the worker holds -------------------------------------------------------
def test_get_of_the_shard_and_of_a_batch_is_refused() -> None:
    worker, fed, data, target = clinic()
    shard_id = fed["clinic"].id_at_location
    refused(worker, lambda: me._send(GetMessage(shard_id), worker), rf"refuses to release object {shard_id} \(data\)")
    refused(worker, data.get, r"refuses to release object \d+ \(data, shape \(4, 3\)\) through get\(\)")
    refused(worker, target.to_here, r".* through to_here\(\): it is private to the worker")
    refused(worker, lambda: data.copy().get())
    refused(worker, lambda: sy.get(data * 1))
    assert len(worker.audit_log) == 0 and data.is_live


def test_search_pointers_to_private_tensors_are_refused() -> None:
    worker, _, data, _ = clinic()
    (found,) = worker.search(str(data.id_at_location))
    refused(worker, found.get)
    assert found.location is worker and data.id_at_location in worker.objects


# -- route: aliases of public memory written with private data ----------------------------------------------------------
ALIASES: dict[str, Callable[[Any], Any]] = {
    "view": lambda p: p.view(4, 3),
    "slice": lambda p: p[0:4],
    "detach": lambda p: p.detach(),
    ".data": lambda p: p.data,
    "view_as": lambda p: p.view_as(p),
    "as_strided": lambda p: p.as_strided((4, 3), (3, 1)),
    "narrow": lambda p: p.narrow(0, 0, 4),
}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_writing_private_data_into_an_alias_of_a_public_tensor_makes_both_private(alias: str) -> None:
    worker, _, data, _ = clinic()
    public = sy.send(torch.zeros(4, 3), worker)
    view = ALIASES[alias](public)
    view.copy_(data)  # the raw batch is now in the public tensor's memory
    refused(worker, view.get)
    refused(worker, public.get)
    refused(worker, lambda: public.expand(2, 4, 3).get())  # a later alias carries the label too


def test_set_and_data_setter_share_private_memory() -> None:
    worker, _, data, _ = clinic()
    a, b = sy.send(torch.zeros(4, 3), worker), sy.send(torch.zeros(4, 3), worker)
    a_id, data_id = a.id_at_location, data.id_at_location  # set_ never reaches __torch_function__: as a message
    me._send(CommandMessage("torch.Tensor.set_", (ObjectRef(a_id), ObjectRef(data_id))), worker)
    refused(worker, a.get)
    b.data = data
    refused(worker, b.get)


def test_grad_setter_with_private_data_is_refused() -> None:
    worker, _, data, _ = clinic()
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    v.grad = data
    refused(worker, v.get)
    refused(worker, lambda: v.grad.get())


@pytest.mark.parametrize(
    "write",
    [
        lambda p, d: torch.mul(d, 1.0, out=p),
        lambda p, d: torch.add(d, 0.0, out=p[0:4]),
        lambda p, d: me._send(
            CommandMessage("torch.Tensor.copy_", (ObjectRef(p.id_at_location), ObjectRef(d.id_at_location))), p.location
        ),
        lambda p, d: p.__setitem__(slice(0, 4), d),
        lambda p, d: p.add_(d),
        lambda p, d: p.unfold(0, 1, 1).copy_(d.unsqueeze(-1)),
    ],
    ids=["out=", "out=view", "message", "__setitem__", "add_", "unfold"],
)
def test_in_place_writes_carry_the_private_label(write: Callable[[Any, Any], Any]) -> None:
    worker, _, data, _ = clinic()
    public = sy.send(torch.zeros(4, 3), worker)
    write(public, data)
    refused(worker, public.get)


# -- route: parameters, gradients, optimizer state ----------------------------------------------------------------------
def test_private_data_copied_into_a_parameter_does_not_leave_with_the_model() -> None:
    worker, _, data, _ = clinic()
    model = sy.send(nn.Linear(3, 4), worker)
    model.weight.data.copy_(data)
    refused(worker, lambda: sy.get(model), r"refuses to release object \d+ \(data, shape \(4, 3\)\)")


def test_a_gradient_of_private_data_is_a_model_update() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(release_model=False))
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    (v * data).sum().backward()  # v.grad == data
    refused(worker, lambda: v.grad.get(), r".*\(update, shape \(4, 3\)\).*release_model=False")
    refused(worker, v.get, r".*\(update, shape \(4, 3\)\).*release_model=False")
    h = v * 1.0
    h.retain_grad()
    (h * data).sum().backward()
    refused(worker, lambda: h.grad.get(), r".*\(update, shape \(4, 3\)\)")

    worker, _, data, _ = clinic()  # the default policy releases model updates, by that rule
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    (v * data).sum().backward()
    assert v.grad.get().shape == (4, 3)
    assert [(r.kind, r.rule) for r in worker.audit_log] == [("update", "release_model")]


def test_gradients_with_respect_to_private_data_stay_private() -> None:
    worker, _, data, _ = clinic()
    data.requires_grad_(True)
    (data * data).sum().backward()  # data.grad == 2 * data
    refused(worker, lambda: data.grad.get())


def test_optimizer_state_and_running_statistics_are_model_updates() -> None:
    worker, _, data, target = clinic(DataAccessPolicy(release_model=False))
    model = sy.send(nn.Linear(3, 1), worker)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.mse_loss(model(data).squeeze(1), target.float()).backward()
    optimizer.step()
    (momentum,) = [s["momentum_buffer"] for s in optimizer.state.values()][:1]
    refused(worker, momentum.get, r".*\(update, shape \(1, 3\)\).*release_model=False")
    mean, var = sy.send(torch.zeros(3), worker), sy.send(torch.ones(3), worker)
    F.batch_norm(data, mean, var, training=True, momentum=1.0)  # mean == the batch mean
    refused(worker, mean.get, r".*\(update, shape \(3,\)\)")


# -- route: moves -------------------------------------------------------------------------------------------------------
def test_a_private_object_moves_only_by_a_rule_and_arrives_private() -> None:
    worker, _, data, _ = clinic()
    other = VirtualWorker(id="other")
    refused(worker, lambda: data.move(other), r".* through move\(\) to worker 'other'")
    assert other.objects == {}

    worker, _, data, _ = clinic(DataAccessPolicy(allow=lambda r: r.command == "move"), "lenient")
    moved = data.move(other)
    assert moved.location is other and [(r.command, r.rule) for r in worker.audit_log] == [("move", "allow")]
    refused(other, moved.get, r"refuses to release object \d+ \(data, shape \(4, 3\)\)")  # not the owner's data


def test_a_failed_move_strips_nothing_and_releases_nothing() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(allow=lambda r: r.command == "move"))
    gone = VirtualWorker(id="gone")
    gone.place_elsewhere("worker 'gone' is in another process")
    with pytest.raises(PointerError, match="another process"):
        data.move(gone)
    assert data.location is worker and data.id_at_location in worker.objects
    assert len(worker.audit_log) == 0
    refused(worker, data.get)


# -- route: result shapes and plain values ------------------------------------------------------------------------------
SHAPE_ATTACKS: dict[str, Callable[[Any, Any], Any]] = {
    "nonzero": lambda d, t: d.nonzero(),
    "argwhere": lambda d, t: torch.argwhere(d > 2),
    "unique": lambda d, t: torch.unique(d),
    "unique_consecutive": lambda d, t: torch.unique_consecutive(t),
    "masked_select": lambda d, t: torch.masked_select(d, d > 4),
    "bool mask": lambda d, t: d[d > 4],
    "bincount": lambda d, t: torch.bincount(t),
    "repeat_interleave": lambda d, t: torch.repeat_interleave(t),
    "where": lambda d, t: torch.where(d > 4),
    "one_hot": lambda d, t: F.one_hot(t),
    "private dim": lambda d, t: d.sum(dim=t[0] % 2),
    "private size": lambda d, t: d.new_zeros(t[0]),
    "tensor_split": lambda d, t: torch.tensor_split(d.flatten(), t),
}


@pytest.mark.parametrize("attack", list(SHAPE_ATTACKS))
def test_shape_dependent_results_on_private_data_are_refused(attack: str) -> None:
    worker, _, data, target = clinic()
    refused(worker, lambda: SHAPE_ATTACKS[attack](data, target), r"refuses to run \S+ on private inputs: .*"
            r"DataAccessPolicy\(release_shapes=True\)")  # fmt: skip
    assert worker.audit_log.refused[-1].kind == "shape"


def test_release_shapes_lets_them_run_and_audits_each_shape() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(release_shapes=True))
    found = data.nonzero()
    assert found.shape == (12, 2)
    assert [(r.kind, r.shape, r.rule) for r in worker.audit_log] == [("shape", (12, 2), "release_shapes")]
    refused(worker, found.get)  # the indices themselves stay private


def test_commands_returning_worker_objects_are_refused() -> None:
    worker, _, data, _ = clinic()
    w = sy.send(torch.ones(3, requires_grad=True), worker)
    refused(worker, lambda: (data @ w).grad_fn, r"refuses to run torch.Tensor.grad_fn.__get__ on private inputs: it "
            r"returns a plain MvBackward0")  # fmt: skip  # an autograd node holds the batch it was computed from
    a, b = sy.send(torch.ones(3, requires_grad=True), worker), sy.send(torch.ones(3), worker)
    y = a * b
    b.copy_(data[0])  # y's graph saved b, which now holds private data
    with pytest.raises(WorkerError, match=r"refuses to return the MulBackward0 that torch.Tensor.grad_fn.__get__ made"):
        y.grad_fn


def test_a_public_result_leaves_without_its_graph() -> None:
    worker, _, data, _ = clinic()
    a, b = sy.send(torch.ones(4, 3, requires_grad=True), worker), sy.send(torch.ones(4, 3), worker)
    y = a * b  # b is saved in y's graph
    b.copy_(data)  # ... and now holds the batch
    value = y.get()
    assert value.grad_fn is None and value.requires_grad and torch.equal(value, torch.ones(4, 3))


# -- route: crafted messages --------------------------------------------------------------------------------------------
def test_a_message_cannot_hand_the_worker_an_object_of_the_callers() -> None:
    worker, _, data, _ = clinic()
    stolen: list[Any] = []

    class Spy:
        @classmethod
        def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            stolen.extend(args)
            return 0

    with pytest.raises(WorkerError, match=r"refuses to run torch.add with an argument of type Spy"):
        me._send(CommandMessage("torch.add", (ObjectRef(data.id_at_location), Spy())), worker)
    mine = torch.zeros(4, 3)
    me._send(CommandMessage("torch.Tensor.copy_", (mine, ObjectRef(data.id_at_location))), worker)
    assert stolen == [] and torch.equal(mine, torch.zeros(4, 3))  # the worker wrote into its own copy


# -- route: error messages ----------------------------------------------------------------------------------------------
def test_errors_of_commands_on_private_data_do_not_echo_it() -> None:
    worker, _, _, target = clinic()
    public = sy.send(torch.zeros(5), worker)
    with pytest.raises(WorkerError) as caught:
        public[target * 1000 + 123]  # out of range: torch would name the (private) index
    message = str(caught.value)
    assert message == (
        "worker 'clinic' failed to run torch.Tensor.__getitem__: IndexError (details withheld: its inputs are "
        "private to the worker, and the error message could contain their values)."
    )
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    with pytest.raises(WorkerError, match=r"IndexError: index 7 is out of bounds"):  # public inputs: the details
        public[sy.send(torch.tensor(7), worker)]
