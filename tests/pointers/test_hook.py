"""Tests of ``TorchHook``: opt-in, idempotent, reversible, and the registry of workers created with it."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError, NotAWorkerError
from lightning_fed.pointers import PointerTensor

PATCHED = [(torch.Tensor, "send"), (nn.Module, "send"), (nn.Module, "get"), (nn.Module, "move"), (Dataset, "federate"),
           (nn.Module, "copy"), (torch.Tensor, "copy"), (torch.Tensor, "tag"), (torch.Tensor, "describe")]  # fmt: skip


def patched_names() -> list[str]:
    return [f"{owner.__name__}.{name}" for owner, name in PATCHED if hasattr(owner, name)]


def test_import_patches_nothing() -> None:
    # A fresh interpreter: no other test's hook can be active there.
    code = (
        "import torch, lightning_fed\n"
        "from torch import nn\n"
        "from torch.utils.data import Dataset\n"
        "found = [f'{o.__name__}.{n}' for o, n in [(torch.Tensor, 'send'), (torch.Tensor, 'get'), "
        "(nn.Module, 'send'), (nn.Module, 'get'), (nn.Module, 'move'), (Dataset, 'federate')] if hasattr(o, n)]\n"
        "print(found)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_hook_adds_the_methods_and_unhook_removes_them() -> None:
    assert patched_names() == []
    hook = sy.TorchHook(torch)
    try:
        assert hook.is_hooked
        assert patched_names() == [f"{owner.__name__}.{name}" for owner, name in PATCHED]
    finally:
        hook.unhook()
    assert not hook.is_hooked
    assert patched_names() == []
    hook.unhook()  # idempotent
    assert patched_names() == []


def test_context_manager_removes_the_methods() -> None:
    with sy.TorchHook(torch) as hook:
        assert hook.is_hooked
        assert hasattr(torch.Tensor, "send") and hasattr(nn.Module, "get")
    assert not hook.is_hooked
    assert patched_names() == []


def test_context_manager_unhooks_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), sy.TorchHook(torch):
        raise RuntimeError("boom")
    assert patched_names() == []


def test_hook_is_idempotent(hook: sy.TorchHook) -> None:
    assert sy.TorchHook(torch) is hook
    assert sy.TorchHook() is hook
    assert patched_names() == [f"{owner.__name__}.{name}" for owner, name in PATCHED]


def test_after_unhook_a_new_hook_is_made() -> None:
    first = sy.TorchHook(torch)
    first.unhook()
    second = sy.TorchHook(torch)
    try:
        assert second is not first
        assert second.is_hooked
        assert hasattr(torch.Tensor, "send")
    finally:
        second.unhook()


def test_unhook_restores_an_attribute_that_was_there_before() -> None:
    def original(self: torch.Tensor, worker: object) -> str:
        return "original"

    torch.Tensor.send = original
    try:
        hook = sy.TorchHook(torch)
        try:
            assert torch.Tensor.send is not original
        finally:
            hook.unhook()
        assert torch.Tensor.__dict__["send"] is original
    finally:
        del torch.Tensor.send
    assert patched_names() == []


@pytest.mark.parametrize("module", [numpy, sys])
def test_hooking_something_other_than_torch_is_refused(module: object) -> None:
    with pytest.raises(
        FederatedConfigError, match=r"TorchHook takes the torch module, got <module .*`TorchHook\(torch\)`"
    ):
        sy.TorchHook(module)
    assert patched_names() == []


def test_hooking_numpy_is_refused_while_a_hook_is_active(hook: sy.TorchHook) -> None:
    # Regression: the active hook was returned before the argument was checked.
    with pytest.raises(FederatedConfigError, match=r"TorchHook takes the torch module, got <module 'numpy'"):
        sy.TorchHook(numpy)
    assert hook.is_hooked


def test_local_worker_is_me(hook: sy.TorchHook) -> None:
    assert hook.local_worker is sy.me
    assert hook.torch is torch


def test_repr(hook: sy.TorchHook) -> None:
    alice = sy.VirtualWorker(hook, id="alice")
    assert repr(hook) == "<TorchHook hooked, 1 workers>"
    assert alice.hook is hook


# -- workers under the hook ------------------------------------------------------------------------------------------
def test_workers_are_registered_under_the_hook(hook: sy.TorchHook) -> None:
    alice = sy.VirtualWorker(hook, id="alice")
    bob = sy.VirtualWorker(hook=hook, id="bob")
    sy.VirtualWorker(id="not-registered")
    assert hook.workers == {"alice": alice, "bob": bob}


def test_recreating_a_worker_id_replaces_the_old_worker_with_a_warning(hook: sy.TorchHook) -> None:
    # a notebook cell run twice creates the worker again: PySyft replaced it with a warning, so do we
    alice = sy.VirtualWorker(hook, id="alice")
    old_ptr = torch.tensor([1.0]).send(alice)
    with pytest.warns(UserWarning, match=r"a worker with `id='alice'` already exists under this hook.*replaced"):
        again = sy.VirtualWorker(hook, id="alice")
    assert hook.workers == {"alice": again}
    assert again is not alice and again.objects == {}
    assert old_ptr.location is alice and torch.equal(old_ptr.get(), torch.tensor([1.0]))  # old pointers still work


def test_an_id_is_reused_silently_once_its_worker_is_collected(hook: sy.TorchHook) -> None:
    # Regression: the check held its own reference to the old worker while collecting it, so it never went away.
    # No gc.collect() here on purpose: the hook must collect the unreachable worker itself.
    alice = sy.VirtualWorker(hook, id="alice")
    del alice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = sy.VirtualWorker(hook, id="alice")
    assert hook.workers == {"alice": again}


def test_the_local_workers_id_is_refused(hook: sy.TorchHook) -> None:
    with pytest.raises(FederatedConfigError, match=r"`id='me'` is the local worker's id: choose another id"):
        sy.VirtualWorker(hook, id="me")


# -- the patched methods ---------------------------------------------------------------------------------------------
def test_tensor_send_through_the_hook(hook: sy.TorchHook) -> None:
    clinic = sy.VirtualWorker(hook, id="clinic")
    ptr = torch.tensor([1, 2]).send(clinic)
    assert type(ptr) is PointerTensor
    assert ptr.location is clinic
    assert torch.equal(ptr.get(), torch.tensor([1, 2]))


def test_tensor_send_to_a_string_is_not_a_worker_error(hook: sy.TorchHook) -> None:
    with pytest.raises(
        NotAWorkerError, match=r"send\(\) needs a worker, got 'alice' \(str\).*VirtualWorker\(hook, id='alice'\)"
    ):
        torch.tensor([1.0]).send("alice")
    with pytest.raises(TypeError, match="needs a worker"):
        torch.tensor([1.0]).send("alice")


def test_module_send_move_get_through_the_hook(hook: sy.TorchHook) -> None:
    alice = sy.VirtualWorker(hook, id="alice")
    bob = sy.VirtualWorker(hook, id="bob")
    model = nn.Linear(2, 1)
    expected = model.weight.detach().clone()
    assert model.send(alice) is model
    assert model.weight.location is alice
    assert model.move(bob) is model
    assert model.weight.location is bob
    assert alice.objects == {}
    assert model.get() is model
    assert type(model.weight) is nn.Parameter
    assert torch.equal(model.weight.detach(), expected)
    assert bob.objects == {}


def test_pointer_methods_do_not_depend_on_the_hook() -> None:
    with sy.TorchHook(torch) as hook:
        alice = sy.VirtualWorker(hook, id="alice")
        ptr = torch.tensor([3.0]).send(alice)
    assert not hasattr(torch.Tensor, "send")
    assert torch.equal((ptr * 2).get(), torch.tensor([6.0]))


# -- PySyft's other hook arguments, copies and tags ------------------------------------------------------------------
def test_verbose_hook_makes_its_workers_print_the_messages_they_receive(capsys) -> None:
    with sy.TorchHook(torch, verbose=True) as hook:
        bob = sy.VirtualWorker(hook, id="bob")
        quiet = sy.VirtualWorker(hook, id="quiet", verbose=False)
        ptr = torch.tensor([3.0, 4.0]).send(bob)
        (ptr * 2).get()
        torch.tensor([1.0]).send(quiet).get()
        assert hook.verbose and bob.verbose and sy.me.verbose
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"worker 'bob' received ObjectMessage object {ptr.id_at_location}"
    assert out[1] == "worker 'bob' received CommandMessage torch.Tensor.mul"
    assert out[2].startswith("worker 'bob' received GetMessage object ")
    assert not any("quiet" in line for line in out)
    assert not any("3." in line or "tensor(" in line for line in out)  # the values never appear
    assert not sy.me.verbose  # unhook restores the local worker


def test_pysyft_positional_hook_arguments_and_seeded_ids() -> None:
    first = sy.TorchHook(torch, None, True, False, 11)
    a = sy.send(torch.zeros(1), sy.VirtualWorker(first, id="a")).id_at_location
    first.unhook()
    second = sy.TorchHook(torch, seed=11)
    b = sy.send(torch.zeros(1), sy.VirtualWorker(second, id="a")).id_at_location
    second.unhook()
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"verbose": "yes"}, r"`verbose='yes'` is not valid: pass True or False"),
     ({"is_client": 1}, r"`is_client=1` is not valid"),
     ({"seed": 1.5}, r"`seed=1.5` is not valid: pass an int")],
)  # fmt: skip
def test_bad_hook_arguments(kwargs, match) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        sy.TorchHook(torch, **kwargs)
    assert not hasattr(torch.Tensor, "send")


def test_a_bad_worker_verbose_is_refused() -> None:
    with pytest.raises(FederatedConfigError, match=r"`verbose='loud'` is not valid"):
        sy.VirtualWorker(id="w", verbose="loud")


def test_model_copy_and_tensor_copy(hook: sy.TorchHook) -> None:
    bob = sy.VirtualWorker(hook, id="bob")
    model = nn.Linear(2, 1)
    bobs_model = model.copy().send(bob)  # PySyft Part 04: a copy goes to the worker, the model stays
    assert type(model.weight) is nn.Parameter and type(bobs_model.weight) is PointerTensor
    remote_copy = bobs_model.copy()  # a copy of a sent model: new tensors at the same worker
    assert remote_copy.weight.location is bob and remote_copy.weight.id_at_location != bobs_model.weight.id_at_location
    assert len(bob.objects) == 4
    assert torch.equal(remote_copy.get().weight, model.weight)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x.copy()
    assert y.requires_grad and y.grad_fn is None and torch.equal(y, x)
    with torch.no_grad():
        y.add_(1)
    assert torch.equal(x, torch.tensor([1.0, 2.0]))  # independent


def test_tags_and_descriptions_travel_with_the_tensor(hook: sy.TorchHook) -> None:
    bob = sy.VirtualWorker(hook, id="bob")
    x = torch.tensor([1, 2, 3]).tag("#radio", "#hospital1").describe("The input datapoints to the hospital1 dataset.")
    assert x.tags == {"#radio", "#hospital1"} and x.description.startswith("The input")
    ptr = x.send(bob)
    held = bob.objects[ptr.id_at_location]
    assert held.tags == {"#radio", "#hospital1"} and held.description == x.description
    assert ptr.tags == {"#radio", "#hospital1"}
    with pytest.raises(sy.PointerError, match=r"tags are given to a tensor before it is sent"):
        ptr.tag("#late")
    with pytest.raises(FederatedConfigError, match=r"tag 3 \(int\) is not valid: tags are strings"):
        torch.zeros(1).tag(3)
