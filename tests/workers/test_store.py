"""Tests of ``ObjectStore`` and object ids: the worker's ``id -> object`` dict and nothing else."""

from __future__ import annotations

import random

import pytest
import torch

from lightning_fed.workers import store as store_module
from lightning_fed.workers.store import ObjectStore, new_object_id


def test_set_get_contains_len() -> None:
    store = ObjectStore()
    value = torch.tensor([1, 2])
    store.set(7, value)
    assert 7 in store
    assert 8 not in store
    assert len(store) == 1
    assert store.get(7) is value
    assert store.objects == {7: value}


def test_get_keeps_and_pop_removes() -> None:
    store = ObjectStore()
    value = torch.tensor([3.0])
    store.set(1, value)
    assert store.get(1) is value
    assert 1 in store
    assert store.pop(1) is value
    assert 1 not in store
    assert store.objects == {}


def test_get_and_pop_of_unknown_id_raise_key_error() -> None:
    store = ObjectStore()
    with pytest.raises(KeyError, match="42"):
        store.get(42)
    with pytest.raises(KeyError, match="42"):
        store.pop(42)


def test_discard_ignores_unknown_ids() -> None:
    store = ObjectStore()
    store.set(1, "a")
    store.discard(2)
    assert store.objects == {1: "a"}
    store.discard(1)
    assert store.objects == {}


def test_set_overwrites() -> None:
    store = ObjectStore()
    store.set(1, "a")
    store.set(1, "b")
    assert store.objects == {1: "b"}
    assert len(store) == 1


def test_clear() -> None:
    store = ObjectStore()
    for i in range(3):
        store.set(i, i)
    store.clear()
    assert len(store) == 0
    assert store.objects == {}


def test_objects_is_the_live_dict() -> None:
    store = ObjectStore()
    objects = store.objects
    store.set(5, "x")
    assert objects == {5: "x"}  # the same dict PySyft showed as `worker._objects`, not a snapshot


def test_repr_counts_objects() -> None:
    store = ObjectStore()
    store.set(1, "a")
    store.set(2, "b")
    assert repr(store) == "ObjectStore(2 objects)"


def test_object_ids_have_eleven_digits() -> None:
    ids = [new_object_id() for _ in range(200)]
    assert all(isinstance(i, int) and 10_000_000_000 <= i < 100_000_000_000 for i in ids)
    assert len(set(ids)) > 190  # random, not a counter stuck on one value


def test_object_ids_do_not_consume_the_users_random_state() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    for _ in range(10):
        new_object_id()
    ObjectStore().new_id()
    assert [random.random() for _ in range(3)] == expected


def test_new_id_skips_ids_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore()
    store.set(11111111111, "taken")
    candidates = iter([11111111111, 11111111111, 22222222222])
    monkeypatch.setattr(store_module, "new_object_id", lambda: next(candidates))
    assert store.new_id() == 22222222222


def test_a_quota_counts_what_is_stored_after_it_and_frees_what_leaves():
    from lightning_fed.exceptions import WorkerError
    from lightning_fed.workers.store import stored_bytes

    store = ObjectStore()
    store.set(1, torch.zeros(1000))  # before the quota: not counted
    store.limit(100, "raise it")
    assert stored_bytes(torch.nn.Linear(3, 2)) == 4 * (6 + 2)
    assert stored_bytes({"a": [torch.zeros(2), (torch.zeros(3, dtype=torch.float16),)], "b": "text"}) == 8 + 6
    store.set(2, torch.zeros(20))  # 80 B
    store.set(2, torch.zeros(25))  # replaced: 100 B, not 180
    assert store.used == 100
    with pytest.raises(WorkerError, match=r"^this worker holds 100 B .* quota is 100 B, and a list of 4 B would pass it: it was "
                                          r"not stored\. .* or raise it\."):  # fmt: skip
        store.set(3, [torch.zeros(1)])
    assert 3 not in store and store.used == 100
    with store.uncounted():
        store.set(4, torch.zeros(1000))  # the owner's own object
    store.pop(2)
    assert store.used == 0
    for obj_id in (5, 6):
        store.set(obj_id, torch.zeros(10))
    store.depart(5, "get")
    store.discard(4)  # uncounted objects leave without changing the count
    store.discard(1)
    assert store.used == 40
    store.clear()
    assert store.used == 0 and len(store) == 0
