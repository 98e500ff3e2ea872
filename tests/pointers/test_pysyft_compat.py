"""PySyft 0.2 pointer API details: ``garbage_collect_data``, sending to several workers, in-place and remote gets, and
the names lightning_fed does not offer."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError, PointerError
from lightning_fed.pointers import PointerTensor
from lightning_fed.workers import VirtualWorker


# -- garbage_collect_data -------------------------------------------------------------------------------------------
def test_send_without_garbage_collection_leaves_the_tensor(hook: sy.TorchHook, bob: VirtualWorker) -> None:
    ptr = torch.tensor([1.0, 2.0]).send(bob, garbage_collect_data=False)
    assert ptr.garbage_collect_data is False
    obj_id = ptr.id_at_location
    del ptr
    gc.collect()
    assert torch.equal(bob.objects[obj_id], torch.tensor([1.0, 2.0]))


def test_the_property_is_read_and_set(bob: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1, 2]), bob)
    assert ptr.garbage_collect_data is True  # the default: dropping the pointer frees the tensor
    ptr.garbage_collect_data = False
    obj_id = ptr.id_at_location
    del ptr
    gc.collect()
    assert obj_id in bob.objects
    kept = sy.send(torch.tensor([3]), bob)
    kept_id = kept.id_at_location
    del kept
    gc.collect()
    assert kept_id not in bob.objects


def test_garbage_collect_data_must_be_a_bool(bob: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1]), bob)
    with pytest.raises(FederatedConfigError, match=r"garbage_collect_data=1.*True.*False"):
        ptr.garbage_collect_data = 1
    with pytest.raises(FederatedConfigError, match="garbage_collect_data='no'"):
        sy.send(torch.tensor([1]), bob, garbage_collect_data="no")


def test_a_module_sent_without_garbage_collection_stays(hook: sy.TorchHook, bob: VirtualWorker) -> None:
    model = nn.Linear(2, 1).send(bob, garbage_collect_data=False)
    assert all(p.garbage_collect_data is False for p in model.parameters())
    del model
    gc.collect()
    assert len(bob.objects) == 2


# -- several workers, names not offered ------------------------------------------------------------------------------
def test_sending_to_several_workers_says_to_send_to_each(hook: sy.TorchHook, bob: VirtualWorker,
                                                          alice: VirtualWorker) -> None:  # fmt: skip
    with pytest.raises(FederatedConfigError, match=r"\['bob', 'alice'\].*MultiPointerTensor.*each worker"):
        torch.tensor([1]).send(bob, alice)
    with pytest.raises(FederatedConfigError, match=r"MultiPointerTensor.*each worker"):
        nn.Linear(2, 1).send(bob, alice)
    with pytest.raises(FederatedConfigError, match=r"send\(\) needs a worker"):
        sy.send(torch.tensor([1]))
    assert not bob.objects and not alice.objects


@pytest.mark.parametrize("name", ["func2plan", "Plan", "create_sandbox", "MultiPointerTensor"])
def test_pysyft_names_not_offered_point_to_the_readme(name: str) -> None:
    with pytest.raises(AttributeError, match=rf"lightning_fed\.{name}.*not offered.*README"):
        getattr(sy, name)


def test_other_missing_names_are_a_plain_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"^module 'lightning_fed' has no attribute 'no_such_name'$"):
        sy.no_such_name
    assert not hasattr(sy, "no_such_name")


# -- get_, get(inplace=True), remote_get, mid_get, child --------------------------------------------------------------
def test_get_underscore_turns_the_pointer_into_the_tensor(bob: VirtualWorker) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    ptr = sy.send(x, bob)
    same = ptr
    out = ptr.get_()
    assert out is same and type(out) is torch.Tensor and not bob.objects
    assert torch.equal(out.detach(), x.detach()) and out.requires_grad
    ptr2 = sy.send(torch.tensor([5]), bob)
    assert ptr2.get(inplace=True) is ptr2 and torch.equal(ptr2, torch.tensor([5]))


def test_get_underscore_obeys_the_policy(bob: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1.0, 2.0]), bob)
    bob.set_policy("strict")
    with pytest.raises(PermissionDeniedError):
        ptr.get_()
    assert type(ptr) is PointerTensor and ptr.is_live and len(bob.objects) == 1


def test_remote_get_brings_the_data_to_the_middle_worker(bob: VirtualWorker, alice: VirtualWorker) -> None:
    chain = sy.send(torch.tensor([1, 2, 3]), bob).send(alice)
    assert chain.remote_get() is chain
    assert not bob.objects and len(alice.objects) == 1
    (held,) = alice.objects.values()
    assert type(held) is torch.Tensor and torch.equal(held, torch.tensor([1, 2, 3]))
    assert torch.equal((chain + 1).get(), torch.tensor([2, 3, 4]))
    with pytest.raises(PointerError, match=r"remote_get\(\) needs a pointer chain.*\.get\(\)"):
        chain.remote_get()


def test_remote_get_obeys_the_policy_as_move_does(bob: VirtualWorker, alice: VirtualWorker) -> None:
    chain = sy.send(torch.tensor([1.0, 2.0]), bob).send(alice)
    probe = sy.send(torch.tensor([0.0]), bob)
    bob.set_policy("strict")  # what bob holds now is private
    with pytest.raises(PermissionDeniedError):
        probe.move(alice)  # what the policy says about .move()
    with pytest.raises(PermissionDeniedError):
        chain.remote_get()
    assert len(bob.objects) == 2 and len(alice.objects) == 1  # nothing moved, alice holds her pointer again
    assert type(next(iter(alice.objects.values()))) is PointerTensor
    assert chain.is_live and chain.get().location is bob


def test_mid_get_and_child_name_the_alternative(bob: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1]), bob)
    with pytest.raises(PointerError, match=r"mid_get\(\).*remote_get\(\)"):
        ptr.mid_get()
    with pytest.raises(AttributeError, match=r"child.*location.*id_at_location"):
        ptr.child
    assert not hasattr(ptr, "child")


# -- no spurious warning ---------------------------------------------------------------------------------------------
def test_sending_a_slice_of_a_tensor_that_requires_grad_warns_nothing(bob: VirtualWorker) -> None:
    data = torch.randn(4, 2, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ptr = sy.send(data[0:2], bob)
    assert not caught, [str(w.message) for w in caught]
    assert ptr.requires_grad and torch.equal(ptr.get().detach(), data[0:2].detach())
