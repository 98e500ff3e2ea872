"""Data discovery (PySyft Part 05): tags and descriptions travel with a tensor; a worker's search returns pointers."""

from __future__ import annotations

import gc

import pytest
import torch

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.pointers import PointerTensor, describe, tag
from lightning_fed.workers import PrivateGridNetwork, VirtualWorker


@pytest.fixture
def bob() -> VirtualWorker:
    return VirtualWorker(id="bob")


@pytest.fixture
def hospital_data(bob: VirtualWorker) -> list[PointerTensor]:
    x = describe(tag(torch.tensor([1, 2, 3, 4, 5]), "#radio", "#hospital1"), "Inputs of the hospital1 set.")
    y = describe(tag(torch.tensor([5, 4, 3, 2, 1]), "#radio", "#hospital2"), "Inputs of the hospital2 set.")
    z = describe(tag(torch.tensor([1.0, 2.0]), "#fun", "#mnist"), "Some MNIST images.")
    return [sy.send(t, bob) for t in (x, y, z)]


def test_search_by_tag_returns_pointers_with_tags_and_description(bob, hospital_data) -> None:
    results = bob.search(["#radio"])
    assert [p.id_at_location for p in results] == [p.id_at_location for p in hospital_data[:2]]
    assert all(type(p) is PointerTensor and p.location is bob and p.owner is sy.me for p in results)
    assert results[0].tags == {"#radio", "#hospital1"} and results[0].description == "Inputs of the hospital1 set."
    assert tuple(results[1].shape) == (5,) and results[1].dtype == torch.int64


def test_every_query_item_must_match_a_tag_a_word_of_the_description_or_the_id(bob, hospital_data) -> None:
    assert [p.id_at_location for p in bob.search("#radio", "#hospital2")] == [hospital_data[1].id_at_location]
    assert [p.tags for p in bob.search("MNIST")] == [{"#fun", "#mnist"}]  # in the description
    assert [p.id_at_location for p in bob.search(hospital_data[2].id_at_location)] == [hospital_data[2].id_at_location]
    assert bob.search(["#boston", "#housing"]) == []
    assert bob.search("#radio", "#mnist") == []


def test_search_pointers_do_not_free_the_data_but_get_takes_it(bob, hospital_data) -> None:
    found = bob.search("#fun")
    del found
    gc.collect()
    assert len(bob.objects) == 3  # the sender's pointers still own the tensors
    (ptr,) = bob.search("#fun")
    assert torch.equal(ptr.get(), torch.tensor([1.0, 2.0])) and len(bob.objects) == 2


def test_search_reveals_no_values(bob, hospital_data) -> None:
    seen = []
    original = bob._recv

    def spy(message):
        answer = original(message)
        seen.append(answer)
        return answer

    bob._recv = spy
    bob.search("#radio")
    (answer,) = seen
    assert all(not isinstance(value, torch.Tensor) for result in answer for value in vars_of(result))


def vars_of(result) -> list:
    return [getattr(result, name) for name in result.__slots__] + [
        getattr(result.descriptor, name) for name in result.descriptor.__slots__
    ]


@pytest.mark.parametrize("item", [1.5, None, True])
def test_a_bad_query_item_is_named(bob, item) -> None:
    with pytest.raises(FederatedConfigError, match=r"search query item .* is not valid: pass tags"):
        bob.search("#radio", item)


def test_a_grid_searches_every_worker(bob, hospital_data) -> None:
    alice = VirtualWorker(id="alice")
    kept = sy.send(tag(torch.zeros(2, 3), "#boston", "#data"), alice)  # noqa: F841
    grid = PrivateGridNetwork(bob, alice)
    assert {k: len(v) for k, v in grid.search("#radio").items()} == {"bob": 2}
    assert list(grid.search("#boston", "#data")) == ["alice"]
    assert grid.search("#boston", "#target") == {}
    with pytest.raises(FederatedConfigError, match=r"same worker id twice"):
        PrivateGridNetwork(bob, bob)
    with pytest.raises(FederatedConfigError, match=r"`workers\[1\]='alice'` \(str\) is not a worker"):
        PrivateGridNetwork(bob, "alice")
