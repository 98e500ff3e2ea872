"""Behaviours PySyft 0.2's tutorials rely on, beyond the seed's (Parts 01-07), each against plain PyTorch.

Pointer chains, search, ``Optims`` and the datasets have their own files (tests/pointers/test_chains.py,
tests/workers/test_search.py, tests/test_pysyft_fl.py, tests/data/test_base_dataset.py); this one follows whole
tutorial flows.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn, optim

import lightning_fed as sy


@pytest.fixture
def hook() -> Iterator[sy.TorchHook]:
    with sy.TorchHook(torch) as hook:
        yield hook


def toy() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]]), torch.tensor([[0], [0], [1], [1.0]])


def test_trusted_aggregator_rounds_equal_local_training_and_averaging(hook) -> None:
    # Part 04: copies of the model train at bob and alice, move to a secure worker, whose average comes home
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    secure_worker = sy.VirtualWorker(hook, id="secure_worker")
    data, target = toy()
    shards = {bob: (data[:2].send(bob), target[:2].send(bob)), alice: (data[2:].send(alice), target[2:].send(alice))}
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = copy.deepcopy(model)
    for _ in range(3):
        remote_models = {}
        for worker, (x, y) in shards.items():
            worker_model = model.copy().send(worker)
            opt = optim.SGD(params=worker_model.parameters(), lr=0.1)
            for _ in range(2):
                opt.zero_grad()
                loss = ((worker_model(x) - y) ** 2).sum()
                loss.backward()
                opt.step()
            remote_models[worker] = worker_model.move(secure_worker)
        a, b = remote_models.values()
        assert a.weight.location is secure_worker and bob.objects.keys() == {x.id_at_location for x in shards[bob]}
        with torch.no_grad():
            model.weight.set_(((a.weight.data + b.weight.data) / 2).get())
            model.bias.set_(((a.bias.data + b.bias.data) / 2).get())
        # the same round, by hand
        local = []
        for x, y in ((data[:2], target[:2]), (data[2:], target[2:])):
            m = copy.deepcopy(reference)
            opt = optim.SGD(m.parameters(), lr=0.1)
            for _ in range(2):
                opt.zero_grad()
                ((m(x) - y) ** 2).sum().backward()
                opt.step()
            local.append(m)
        with torch.no_grad():
            for p, p1, p2 in zip(reference.parameters(), local[0].parameters(), local[1].parameters(), strict=True):
                p.copy_((p1 + p2) / 2)
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert type(model.weight) is nn.Parameter


def test_part_01_pointer_attributes_and_remote_autograd(hook) -> None:
    bob = sy.VirtualWorker(hook, id="bob")
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert bob == x_ptr.location and sy.local_worker == x_ptr.owner
    assert x_ptr.id_at_location in bob._objects
    x = torch.tensor([1, 2, 3, 4, 5.0], requires_grad=True).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1.0], requires_grad=True).send(bob)
    (x + y).sum().backward()
    assert torch.equal(x.get().grad, torch.ones(5))


def test_part_05_tags_search_and_grid(hook) -> None:
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    x = torch.tensor([1, 2, 3, 4, 5]).tag("#radio", "#hospital1").describe("The input datapoints to hospital1.")
    y = torch.tensor([5, 4, 3, 2, 1]).tag("#radio", "#hospital2").describe("The input datapoints to hospital2.")
    x, y = x.send(bob), y.send(alice)
    results = bob.search(["#radio"])
    assert len(results) == 1 and results[0].description == "The input datapoints to hospital1."
    grid = sy.PrivateGridNetwork(bob, alice)
    found = grid.search("#radio")
    assert sorted(found) == ["alice", "bob"] and torch.equal(found["alice"][0].get(), torch.tensor([5, 4, 3, 2, 1]))
