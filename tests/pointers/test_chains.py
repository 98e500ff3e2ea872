"""Pointer chains (PySyft Part 03): sending a pointer gives the worker that pointer; the data stays where it is."""

from __future__ import annotations

import gc

import pytest
import torch

import lightning_fed as sy
from lightning_fed.exceptions import PointerError
from lightning_fed.pointers import PointerTensor
from lightning_fed.workers import VirtualWorker


def test_send_on_a_pointer_leaves_the_data_and_gives_the_pointer(bob: VirtualWorker, alice: VirtualWorker) -> None:
    x_ptr = sy.send(torch.tensor([1, 2, 3, 4]), bob)
    data_id = x_ptr.id_at_location
    to_x_ptr = x_ptr.send(alice)
    assert list(bob.objects) == [data_id]  # bob keeps the tensor
    (held,) = alice.objects.values()
    assert type(held) is PointerTensor and held.location is bob and held.id_at_location == data_id
    assert held.owner is alice  # alice's pointer speaks for alice
    assert to_x_ptr.location is alice and to_x_ptr.owner is sy.me
    assert repr(held).startswith("(Wrapper)>[PointerTensor | alice:") and repr(held).endswith(f"-> bob:{data_id}]")


def test_get_unwinds_one_level_at_a_time(bob: VirtualWorker, alice: VirtualWorker) -> None:
    to_x_ptr = sy.send(torch.tensor([1, 2, 3, 4]), bob).send(alice)
    x_ptr = to_x_ptr.get()
    assert type(x_ptr) is PointerTensor and x_ptr.location is bob and x_ptr.owner is sy.me
    assert alice.objects == {} and len(bob.objects) == 1
    assert torch.equal(x_ptr.get(), torch.tensor([1, 2, 3, 4]))
    assert bob.objects == {}


def test_operations_on_a_chain_run_where_the_data_is(bob: VirtualWorker, alice: VirtualWorker) -> None:
    p2p2x = sy.send(torch.tensor([1, 2, 3, 4, 5]), bob).send(alice)
    y = p2p2x + p2p2x
    assert y.location is alice
    assert len(bob.objects) == 2 and len(alice.objects) == 2  # the result lives at bob, alice points to it
    assert all(type(o) is PointerTensor for o in alice.objects.values())
    assert torch.equal(y.get().get(), torch.tensor([2, 4, 6, 8, 10]))
    assert torch.equal(p2p2x.get().get(), torch.tensor([1, 2, 3, 4, 5]))
    assert bob.objects == {} and alice.objects == {}


def test_autograd_through_a_chain_matches_local(bob: VirtualWorker, alice: VirtualWorker) -> None:
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    chain = sy.send(w, bob).send(alice)
    loss = (chain * chain).sum()
    loss.backward()
    back = chain.get().get()
    local = w.detach().clone().requires_grad_()
    (local * local).sum().backward()
    assert torch.equal(back.grad, local.grad)


def test_a_dropped_chain_frees_every_level(bob: VirtualWorker, alice: VirtualWorker) -> None:
    chain = sy.send(torch.ones(2), bob).send(alice)
    assert len(bob.objects) == 1 and len(alice.objects) == 1
    del chain
    gc.collect()
    assert bob.objects == {} and alice.objects == {}


def test_the_sent_pointer_is_spent_and_frees_nothing(bob: VirtualWorker, alice: VirtualWorker) -> None:
    x_ptr = sy.send(torch.ones(2), bob)
    chain = x_ptr.send(alice)
    with pytest.raises(PointerError, match=r"was sent to worker 'alice' with \.send\(\).*use the pointer \.send\(\)"):
        x_ptr.get()
    del x_ptr
    gc.collect()
    assert len(bob.objects) == 1  # alice's pointer still needs the data
    assert torch.equal(chain.get().get(), torch.ones(2))


def test_moving_a_chain_hands_the_link_to_the_new_worker(bob: VirtualWorker, alice: VirtualWorker) -> None:
    carol = VirtualWorker(id="carol")
    chain = sy.send(torch.tensor([7.0]), bob).send(alice)
    chain.move(carol)
    assert alice.objects == {}
    (link,) = carol.objects.values()
    assert link.owner is carol and link.location is bob
    assert torch.equal((chain * 2).get().get(), torch.tensor([14.0]))


def test_move_still_moves_the_data(bob: VirtualWorker, alice: VirtualWorker) -> None:
    x = sy.send(torch.tensor([1, 2, 3, 4, 5]), bob)
    assert x.move(alice) is x
    assert bob.objects == {} and next(iter(alice.objects.values())).tolist() == [1, 2, 3, 4, 5]


def test_the_hook_sends_a_pointer_the_same_way(bob: VirtualWorker, alice: VirtualWorker) -> None:
    with sy.TorchHook(torch):
        chain = torch.tensor([1.0]).send(bob).send(alice)
        assert chain.location is alice and len(bob.objects) == 1
        assert torch.equal(chain.get().get(), torch.tensor([1.0]))
