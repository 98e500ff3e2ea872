"""Tests of the command allowlist: what a worker runs, what it refuses and why, and the message dataclasses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lightning_fed.exceptions import WorkerError
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.commands import allowlist, command_name, refusal_reason, resolve_command
from lightning_fed.workers.messages import (
    CommandMessage,
    DeleteMessage,
    GetMessage,
    ObjectMessage,
    ObjectRef,
    PlanMessage,
    TensorDescriptor,
)

REVEAL = "it would return the worker's data as a plain value: call .get() on the pointer first"
CALLABLE = "it takes a Python callable, and a worker runs only torch functions"


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (torch.add, "torch.add"),
        (torch.matmul, "torch.matmul"),
        (torch.Tensor.add_, "torch.Tensor.add_"),
        (torch.Tensor.__add__, "torch.Tensor.__add__"),
        (torch.Tensor.__rsub__, "torch.Tensor.__rsub__"),
        (torch.Tensor.backward, "torch.Tensor.backward"),
        (torch.Tensor.to, "torch.Tensor.to"),
        (F.nll_loss, "torch.nn.functional.nll_loss"),
        (F.relu, "torch.nn.functional.relu"),
    ],
)
def test_command_name_and_resolve_round_trip(func: object, name: str) -> None:
    assert command_name(func) == name
    assert resolve_command(name) is func
    assert refusal_reason(name) is None
    assert name in allowlist()


def test_attribute_getters_and_setters_are_commands() -> None:
    getter = command_name(torch.Tensor.grad.__get__)
    assert getter == "torch.Tensor.grad.__get__"
    assert resolve_command(getter) == torch.Tensor.grad.__get__
    assert "torch.Tensor.grad.__set__" in allowlist()


@pytest.mark.parametrize(
    ("func", "reason"),
    [
        (torch.Tensor.item, REVEAL),
        (torch.Tensor.tolist, REVEAL),
        (torch.Tensor.numpy, REVEAL),
        (torch.Tensor.__bool__, REVEAL),
        (torch.Tensor.__int__, REVEAL),
        (torch.Tensor.__float__, REVEAL),
        (torch.Tensor.__contains__, REVEAL),
        (torch.Tensor.data_ptr, REVEAL),
        (torch.equal, REVEAL),
        (torch.Tensor.register_hook, CALLABLE),
        (torch.Tensor.apply_, CALLABLE),
    ],
)
def test_revealing_and_callable_taking_functions_are_refused(func: object, reason: str) -> None:
    name = command_name(func)
    assert name is not None
    assert refusal_reason(name) == reason
    assert resolve_command(name) is None
    assert name not in allowlist()


@pytest.mark.parametrize(
    "func",
    [
        torch.Tensor.__repr__,
        torch.Tensor.__format__,
        torch.Tensor.__long__,
        torch.Tensor.__nonzero__,
        torch.sym_float,
        torch.sym_int,
    ],
)
def test_functions_returning_data_as_strings_or_numbers_are_refused(func: object) -> None:
    # Regression: these returned the remote values as a str / int / float and were allowlisted.
    name = command_name(func)
    assert name is not None
    assert refusal_reason(name) == REVEAL
    assert resolve_command(name) is None


@pytest.mark.parametrize(
    "name", ["os.system", "builtins.eval", "torch.load", "torch.save", "subprocess.run", "torch.Tensor.__class__"]
)
def test_names_outside_the_torch_tables_are_unknown(name: str) -> None:
    assert resolve_command(name) is None
    assert refusal_reason(name) is None
    assert name not in allowlist()


def test_functions_outside_the_allowlist_have_no_name() -> None:
    assert command_name(print) is None
    assert command_name(torch.load) is None


def test_reduce_ex_is_in_the_table_but_refused() -> None:
    assert refusal_reason("torch.Tensor.__reduce_ex__") == REVEAL
    assert resolve_command("torch.Tensor.__reduce_ex__") is None


def test_allowlist_is_large_and_frozen() -> None:
    names = allowlist()
    assert isinstance(names, frozenset)
    assert len(names) > 500
    assert {"torch.add", "torch.Tensor.__getitem__", "torch.Tensor.__setitem__", "torch.conv2d"} <= names


# -- a worker never runs a name outside the allowlist ----------------------------------------------------------------
@pytest.fixture
def worker() -> VirtualWorker:
    w = VirtualWorker(id="cmd")
    me._send(ObjectMessage(1, torch.tensor([3.25, 4.5])), w)
    return w


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("os.system", "it is not in the worker's command allowlist"),
        ("builtins.eval", "it is not in the worker's command allowlist"),
        ("torch.Tensor.item", r"it would return the worker's data as a plain value: call \.get\(\) on the pointer"),
        ("torch.Tensor.__repr__", "it would return the worker's data as a plain value"),
        ("torch.Tensor.register_hook", "it takes a Python callable"),
    ],
)
def test_worker_refuses_raw_commands(worker: VirtualWorker, command: str, reason: str) -> None:
    before = dict(worker.objects)
    with pytest.raises(WorkerError, match=rf"worker 'cmd' refuses to run {command}: {reason}"):
        me._send(CommandMessage(command, (ObjectRef(1),)), worker)
    assert worker.objects == before


def test_worker_refuses_os_system_without_running_it(worker: VirtualWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(WorkerError, match=r"refuses to run os\.system"):
        me._send(CommandMessage("os.system", ("echo hi",)), worker)
    assert calls == []


def test_worker_runs_an_allowlisted_raw_command(worker: VirtualWorker) -> None:
    desc = me._send(CommandMessage("torch.mul", (ObjectRef(1), 2), {}), worker)
    assert isinstance(desc, TensorDescriptor)
    assert desc.shape == torch.Size([2])
    assert desc.dtype == torch.float32
    assert desc.requires_grad is False
    assert torch.equal(worker.objects[desc.obj_id], torch.tensor([6.5, 9.0]))


def test_worker_resolves_kwargs(worker: VirtualWorker) -> None:
    me._send(ObjectMessage(2, torch.tensor([1.0, 1.0])), worker)
    desc = me._send(CommandMessage("torch.add", (ObjectRef(1),), {"other": ObjectRef(2), "alpha": 2}), worker)
    assert torch.equal(worker.objects[desc.obj_id], torch.tensor([5.25, 6.5]))


# -- messages ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        ObjectRef(1),
        ObjectMessage(1, None),
        GetMessage(1),
        DeleteMessage(1),
        CommandMessage("torch.add", ()),
        PlanMessage("p", ()),
    ],
)
def test_messages_are_frozen(message: object) -> None:
    field = dataclasses.fields(message)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(message, field, 2)


def test_message_defaults() -> None:
    assert GetMessage(3).keep is False
    assert CommandMessage("torch.add", (1,)).kwargs == {}
    assert PlanMessage("p", ()).kwargs == {}
    assert CommandMessage("torch.add", ()).kwargs is not CommandMessage("torch.add", ()).kwargs
