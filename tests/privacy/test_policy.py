"""The data-access policy: private data stays at its worker, models and losses leave, every release is audited."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.privacy import DataAccessPolicy, ReleaseRequest
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.messages import GetMessage


def clinic_with_data(policy: DataAccessPolicy | None = None, n: int = 6) -> tuple[Any, ...]:
    """A worker "clinic" under ``policy`` holding a federated shard, and one batch (data, target) of it."""
    clinic = VirtualWorker(id="clinic", policy=policy if policy is not None else DataAccessPolicy())
    dataset = TensorDataset(torch.randn(n, 3), torch.randn(n, 1))
    fed = sy.federate(dataset, [clinic])
    data, target = next(iter(sy.FederatedDataLoader(fed, batch_size=n)))
    return clinic, fed, data, target


def _open_warned() -> bool:
    from lightning_fed.privacy import policy

    return policy._warned_open


@contextlib.contextmanager
def _no_warning() -> Any:
    yield


def refused(worker: str, obj_id: int) -> str:
    return rf"worker '{worker}' refuses to release object {obj_id} \("


# -- the open policy: an explicit opt-in, still audited ----------------------------------------------------------------
def test_an_open_policy_releases_data_and_still_audits_it() -> None:
    worker = VirtualWorker(id="open", policy=DataAccessPolicy.open())
    assert worker.policy.release_data and worker.policy.release_shapes and len(worker.audit_log) == 0
    fed = sy.federate(TensorDataset(torch.arange(4.0).reshape(4, 1)), [worker])
    (data,) = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
    data_id = data.id_at_location
    assert torch.equal(data.get(), torch.arange(4.0).reshape(4, 1))
    assert [(r.obj_id, r.kind, r.private, r.rule) for r in worker.audit_log] == [
        (data_id, "data", True, "release_data")
    ]


def test_a_worker_is_strict_by_default() -> None:
    worker = VirtualWorker(id="default")
    assert worker.policy == DataAccessPolicy.strict() and worker.audit_log.refused == []
    fed = sy.federate(TensorDataset(torch.arange(4.0).reshape(4, 1)), [worker])
    (data,) = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
    with pytest.raises(PermissionDeniedError, match=refused("default", data.id_at_location)):
        data.get()


# -- private data is refused -------------------------------------------------------------------------------------------
def test_get_of_a_private_batch_is_refused_naming_worker_and_object() -> None:
    clinic, _, data, _ = clinic_with_data()
    with pytest.raises(PermissionDeniedError, match=refused("clinic", data.id_at_location) + r"data, shape \(6, 3\)"):
        data.get()
    with pytest.raises(PermissionDeniedError, match=r"through to_here\(\): it is private to the worker"):
        data.to_here()
    other = VirtualWorker(id="other")
    with pytest.raises(PermissionDeniedError, match=r"through move\(\) to worker 'other'"):
        data.move(other)
    assert data.is_live and data.id_at_location in clinic.objects and other.objects == {}
    assert [r.command for r in clinic.audit_log.refused] == ["get", "to_here", "move"]
    assert len(clinic.audit_log) == 0


def test_the_dataset_shard_and_everything_computed_from_it_is_private() -> None:
    clinic, fed, data, target = clinic_with_data()
    shard_id = fed["clinic"].id_at_location
    with pytest.raises(PermissionDeniedError, match=refused("clinic", shard_id) + r"data\) through get\(\)"):
        me._send(GetMessage(shard_id), clinic)
    for derived in (data * 2, data[0], torch.cat([data, data]), (data - target).abs(), data.T @ data):
        with pytest.raises(PermissionDeniedError, match=refused("clinic", derived.id_at_location)):
            derived.get()


def test_in_place_writes_make_the_target_private() -> None:
    clinic, _, data, _ = clinic_with_data()
    for write in (
        lambda p: p.copy_(data),
        lambda p: p.add_(data),
        lambda p: p.__setitem__(0, data[0]),
        lambda p: torch.mul(data, 1.0, out=p),
    ):
        public = sy.send(torch.zeros(6, 3), clinic)
        write(public)
        with pytest.raises(PermissionDeniedError, match=refused("clinic", public.id_at_location)):
            public.get()


def test_objects_held_before_the_policy_is_set_are_private() -> None:
    worker = VirtualWorker(id="late")
    ptr = sy.send(torch.ones(2), worker)
    weight = sy.send(nn.Linear(2, 1), worker).weight
    worker.set_policy(DataAccessPolicy())
    with pytest.raises(PermissionDeniedError, match=refused("late", ptr.id_at_location)):
        ptr.get()
    assert weight.get().shape == (1, 2)  # parameters stay model objects
    with pytest.raises(FederatedConfigError, match=r"`policy=None` is not valid: pass 'strict' \(the default"):
        worker.set_policy(None)
    assert worker.policy == DataAccessPolicy()  # the refused call changed nothing
    with pytest.warns(UserWarning, match=r"open data-access policy") if not _open_warned() else _no_warning():
        worker.set_policy("open")
    assert torch.equal(ptr.get(), torch.ones(2)) and worker.audit_log[-1].rule == "release_data"


# -- what is releasable ------------------------------------------------------------------------------------------------
def test_tensors_the_owner_sent_are_public() -> None:
    worker = VirtualWorker(id="w", policy=DataAccessPolicy(release_model=False, release_scalars=False))
    a, b = sy.send(torch.tensor([1.0, 2.0]), worker), sy.send(torch.tensor([3.0, 4.0]), worker)
    assert torch.equal((a + b).get(), torch.tensor([4.0, 6.0]))
    assert [(r.kind, r.rule, r.private) for r in worker.audit_log] == [("tensor", "public", False)]


def test_scalar_losses_leave_detached_unless_the_policy_keeps_them() -> None:
    clinic, _, data, target = clinic_with_data()
    w = sy.send(torch.randn(3, 1, requires_grad=True), clinic)
    loss = F.mse_loss(data @ w, target)
    value = loss.get()
    assert value.shape == () and value.grad_fn is None  # its graph (holding the data) stays behind
    record = clinic.audit_log[-1]
    assert (record.kind, record.rule, record.private, record.shape) == ("scalar", "release_scalars", True, ())

    _, _, data, target = clinic_with_data(DataAccessPolicy(release_scalars=False))
    loss = F.mse_loss(data.sum(dim=1, keepdim=True), target)
    with pytest.raises(PermissionDeniedError, match=r"\(scalar\) through get\(\): release_scalars=False"):
        loss.get()


def test_the_seed_tutorial_loop_runs_under_a_policy_and_data_stays() -> None:
    clinic, _, data, target = clinic_with_data()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        model = sy.send(model, data.location)
        optimizer.zero_grad()
        loss = F.mse_loss(model(data), target)
        loss.backward()
        optimizer.step()
        sy.get(model)
        assert loss.get().shape == ()
    kinds = {(r.kind, r.command) for r in clinic.audit_log}
    assert kinds == {("parameter", "get"), ("scalar", "get")}
    with pytest.raises(PermissionDeniedError):
        data.get()


def test_model_parameters_and_updates_can_be_kept() -> None:
    clinic, _, data, target = clinic_with_data(DataAccessPolicy(release_model=False))
    model = sy.send(nn.Linear(3, 1), clinic)
    F.mse_loss(model(data), target).backward()
    grad = model.weight.grad
    for ptr, kind in ((model.weight, "parameter"), (grad, "update"), (model.weight - grad, "update")):
        with pytest.raises(PermissionDeniedError, match=rf"\({kind}, shape \(1, 3\)\).*release_model=False"):
            ptr.get()


def test_allow_callback_releases_what_the_rules_refuse() -> None:
    asked: list[ReleaseRequest] = []

    def allow(request: ReleaseRequest) -> bool:
        asked.append(request)
        return request.command == "to_here"

    clinic, _, data, _ = clinic_with_data(DataAccessPolicy(allow=allow))
    copy = data.to_here()
    assert copy.shape == (6, 3) and data.is_live
    with pytest.raises(PermissionDeniedError):
        data.get()
    assert [(r.kind, r.command, r.worker_id) for r in asked] == [
        ("data", "to_here", "clinic"),
        ("data", "get", "clinic"),
    ]
    assert clinic.audit_log[0].rule == "allow"


# -- the audit log -----------------------------------------------------------------------------------------------------
def test_audit_log_records_what_left_how_and_when() -> None:
    worker, other = VirtualWorker(id="w", policy=DataAccessPolicy()), VirtualWorker(id="o")
    start = time.time()
    a = sy.send(torch.ones(2, 3), worker)
    b = sy.send(torch.zeros(4, dtype=torch.int64), worker)
    c = sy.send(torch.ones(1), worker)
    a_id, b_id, c_id = a.id_at_location, b.id_at_location, c.id_at_location
    a.to_here()
    b.move(other)
    c.get()
    log = worker.audit_log
    rows = [(r.obj_id, r.kind, r.shape, r.dtype, r.command, r.destination) for r in log]
    assert rows == [
        (a_id, "tensor", (2, 3), "float32", "to_here", None),
        (b_id, "tensor", (4,), "int64", "move", "o"),
        (c_id, "tensor", (1,), "float32", "get", None),
    ]
    assert all(start <= r.timestamp <= time.time() for r in log)
    assert [r.seq for r in log] == sorted(r.seq for r in log)
    assert log.filter(command="move")[0].obj_id == b_id and len(log) == 3 and log.refused == []
    assert repr(log) == "AuditLog(3 released, 0 refused)"
    assert len(other.audit_log) == 0 and other.audit_log is not log  # the policy and its log are per worker
    log.clear()
    assert len(log) == 0


def test_labels_are_forgotten_with_their_objects() -> None:
    clinic, _fed, data, _target = clinic_with_data()  # held: their objects stay at the worker
    labels = clinic._guard.labels
    before = len(labels)
    assert before == 3  # the shard (by id), the batch's data and target (by memory)
    for _ in range(20):
        (data * 2).sum()  # temporaries: deleted at the worker when their pointers go, their labels with their memory
    assert len(labels) == before
    clinic.clear_objects()
    assert len(labels) == 0


def test_federated_training_releases_only_updates_and_metrics() -> None:
    workers = [VirtualWorker(id=f"school{i}") for i in range(2)]  # the default, strict policy
    data = FederatedDataModule.from_datasets(
        TensorDataset(torch.randn(16, 4), torch.arange(16) % 2), workers=workers, batch_size=8
    )
    trainer = pl.Trainer(
        strategy=FederatedStrategy(), max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(BoringClassifier(), datamodule=data)
    assert trainer.strategy.round_index == 1
    for worker in workers:  # only what the default policy names leaves: the round's update and scalar metrics
        assert worker.audit_log.refused == [] and len(worker.audit_log) > 0
        assert {(r.kind, r.rule) for r in worker.audit_log} <= {
            ("update", "release_model"),
            ("scalar", "release_scalars"),
        }


# -- configuration -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"release_model": "yes"}, r"DataAccessPolicy `release_model='yes'` is not valid: pass True or False"),
        ({"release_scalars": 1}, r"DataAccessPolicy `release_scalars=1` is not valid"),
        ({"allow": 3}, r"DataAccessPolicy `allow=3` is not valid: pass a function ReleaseRequest -> bool or None"),
    ],
)
def test_bad_policy_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        DataAccessPolicy(**kwargs)


def test_move_between_guarded_workers_is_checked_at_the_source() -> None:
    a = VirtualWorker(id="a", policy=DataAccessPolicy())
    b = VirtualWorker(id="b", policy=DataAccessPolicy())
    ptr = sy.send(torch.ones(3), a).move(b)
    assert ptr.location is b and len(a.audit_log) == 1 and a.audit_log[0].destination == "b"
    assert torch.equal(ptr.get(), torch.ones(3))
    assert [r.command for r in b.audit_log] == ["get"]
