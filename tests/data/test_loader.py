"""Tests of ``FederatedDataLoader``: pointers only, batch counts and shapes, order, determinism, bad arguments."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler, TensorDataset

import lightning_fed as sy
from lightning_fed.data import FederatedDataLoader, FederatedDataset, federate
from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.pointers import PointerTensor

N = 22  # 11 samples per worker: batches of 4 leave a remainder of 3


def make_dataset(n: int = N) -> TensorDataset:
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)  # row i starts with 3 * i: identifies the sample
    return TensorDataset(x, torch.arange(n) % 4)


@pytest.fixture
def workers() -> tuple[sy.VirtualWorker, sy.VirtualWorker]:
    return sy.VirtualWorker(id="alice"), sy.VirtualWorker(id="bob")


@pytest.fixture
def fed(workers) -> FederatedDataset:
    return federate(make_dataset(), workers, seed=0)


def leaves(batch: Any) -> Iterator[Any]:
    if isinstance(batch, (tuple, list)):
        for item in batch:
            yield from leaves(item)
    elif isinstance(batch, dict):
        for item in batch.values():
            yield from leaves(item)
    else:
        yield batch


def at_worker(x: PointerTensor, y: PointerTensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A batch as (worker id, data, target), read at its worker: the test owns the simulation, so it looks into the
    worker's store; ``.get()`` is refused by the default (strict) policy (see test_private_by_default)."""
    with x.location.session((x, y)) as (data, target):
        return x.location.id, data.clone(), target.clone()


def fetched(loader: FederatedDataLoader) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    """Every batch of one pass as (worker id, data, target), read at the worker that holds it (test-only)."""
    return [at_worker(x, y) for x, y in loader]


def sample_ids(batches: list[tuple[Any, torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    return [(x[:, 0] / 3).long().tolist() for _, x, _ in batches]


def test_loader_hands_out_pointers_only(fed, workers):
    assert sy.me.objects == {}
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True)
    count = 0
    for batch in loader:
        assert all(type(leaf) is PointerTensor for leaf in leaves(batch))
        assert {leaf.location for leaf in leaves(batch)} <= set(workers)
        assert sy.me.objects == {}  # no tensor of a worker's data reached the local worker
        count += 1
    assert count == len(loader) == 6


@pytest.mark.parametrize("order", ["sequential", "round_robin"])
@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 3]), (True, [4, 4])])
def test_batch_counts_shapes_and_order(fed, order, drop_last, sizes):
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True, drop_last=drop_last, order=order)
    batches = [(x.location.id, tuple(x.shape), tuple(y.shape)) for x, y in loader]
    assert len(batches) == len(loader) == 2 * len(sizes)
    assert loader.num_batches("alice") == loader.num_batches(fed.workers[1]) == len(sizes)
    if order == "sequential":
        expected = [("alice", s) for s in sizes] + [("bob", s) for s in sizes]
    else:
        expected = [(w, s) for s in sizes for w in ("alice", "bob")]
    assert batches == [(w, (s, 3), (s,)) for w, s in expected]


def test_round_robin_with_uneven_shards_continues_with_the_larger_worker(workers):
    fed = FederatedDataset(make_dataset(14), workers, [list(range(10)), list(range(10, 14))])
    loader = FederatedDataLoader(fed, batch_size=4, order="round_robin")
    assert [(x.location.id, len(x)) for x, _ in loader] == [("alice", 4), ("bob", 4), ("alice", 4), ("alice", 2)]
    assert len(loader) == 4


def test_one_epoch_covers_every_sample_once_and_data_matches_batch_indices(fed):
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True, seed=3)
    expected = [b for w in fed.workers for b in loader.batch_indices(w, epoch=0)]
    batches = fetched(loader)
    assert sample_ids(batches) == expected
    assert sorted(i for ids in expected for i in ids) == list(range(N))
    data = make_dataset()
    for (_, x, y), ids in zip(batches, expected, strict=True):
        assert torch.equal(x, data.tensors[0][ids]) and torch.equal(y, data.tensors[1][ids])


def test_without_shuffle_each_worker_yields_its_shard_in_order(fed):
    loader = FederatedDataLoader(fed, batch_size=4)
    ids = sample_ids(fetched(loader))
    assert [i for b in ids[:3] for i in b] == fed.partition[0]
    assert [i for b in ids[3:] for i in b] == fed.partition[1]


def test_same_seed_same_batches_different_seed_different(workers):
    def run(seed: int) -> list[list[int]]:
        fed = federate(make_dataset(), workers, seed=seed)
        return sample_ids(fetched(FederatedDataLoader(fed, batch_size=4, shuffle=True, seed=seed)))

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_set_epoch_changes_the_shuffle_reproducibly(fed):
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True)
    loader.set_epoch(0)
    epoch0 = sample_ids(fetched(loader))
    loader.set_epoch(1)
    epoch1 = sample_ids(fetched(loader))
    assert epoch0 != epoch1
    assert sorted(map(sorted, epoch0)) != sorted(map(sorted, epoch1))  # different batches, not just reordered
    loader.sampler.set_epoch(1)  # the way Lightning's fit loop sets it
    assert sample_ids(fetched(loader)) == epoch1
    loader.set_epoch(0)
    assert sample_ids(fetched(loader)) == epoch0
    assert sample_ids(fetched(loader)) == epoch1  # a plain loop moves to the next epoch by itself
    twin = FederatedDataLoader(fed, batch_size=4, shuffle=True)
    assert twin.batch_indices("alice", epoch=1) == loader.batch_indices("alice", epoch=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_workers": 2}, r"does not support num_workers=2"),
        ({"pin_memory": True}, r"does not support pin_memory=True"),
        ({"sampler": SequentialSampler(range(3))}, r"does not support sampler=<torch.utils.data.sampler"),
        ({"num_workers": 2, "pin_memory": True}, r"num_workers=2, pin_memory=True: workers build"),
        ({"batch_size": 0}, r"`batch_size=0` is not valid: pass an integer >= 1"),
        ({"order": "random"}, r"`order='random'` is not valid: choose one of \('sequential', 'round_robin'\)"),
        ({"seed": -1}, r"`seed=-1` is not valid: pass an integer >= 0"),
    ],
)
def test_bad_arguments_raise_naming_them(fed, kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedDataLoader(fed, **kwargs)


def test_a_plain_dataset_is_refused_with_the_fix():
    with pytest.raises(FederatedConfigError, match=r"must be a FederatedDataset, got TensorDataset.*federate"):
        FederatedDataLoader(make_dataset(), batch_size=4)


def test_unknown_worker_is_a_clear_key_error(fed):
    loader = FederatedDataLoader(fed, batch_size=4)
    with pytest.raises(KeyError, match=r"no worker 'carol' in this FederatedDataset; workers: \['alice', 'bob'\]"):
        loader.batch_indices("carol")


class Named(Dataset):
    """Samples with a file name: a string the worker must not hand out."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return torch.tensor([float(i)]), f"patient-{i}.png"


def test_a_non_tensor_in_a_batch_is_refused_at_the_worker(workers):
    loader = FederatedDataLoader(federate(Named(), workers), batch_size=2)
    # the library's own error names the structure, not values: it is shown although the inputs are private
    with pytest.raises(WorkerError, match=r"batch\[1\]\[0\] is a str, not a tensor: .* pointers to tensors only"):
        next(iter(loader))
    assert sy.me.objects == {}
    assert all(len(w.objects) == 1 for w in workers)  # only the shard: nothing half-built left behind


class Records(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((2,), float(i)), "label": torch.tensor(i)}


def test_dict_batches_and_a_custom_collate_fn(workers):
    loader = FederatedDataLoader(federate(Records(), workers), batch_size=2)
    batch = next(iter(loader))
    assert set(batch) == {"image", "label"} and all(type(v) is PointerTensor for v in batch.values())

    def stack_images(samples: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.stack([s["image"] for s in samples]) * 10

    custom = FederatedDataLoader(federate(Records(), workers), batch_size=2, collate_fn=stack_images)
    first = next(iter(custom))
    assert type(first) is PointerTensor and first.shape == (2, 2)


def test_worker_stores_hold_only_the_shard_once_batches_are_dropped(fed, workers):
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True, order="round_robin")
    for _ in range(2):
        for batch in loader:
            assert len(batch) == 2
            assert sum(len(w.objects) for w in workers) <= 2 + 2 * 2  # shards + the batch held here + the next one
        del batch
        assert [sorted(type(o).__name__ for o in w.objects.values()) for w in workers] == [["Subset"], ["Subset"]]


def test_dropping_the_loader_removes_its_plan_and_dropping_the_dataset_frees_the_shards(workers):
    fed = federate(make_dataset(), workers)
    loader = FederatedDataLoader(fed, batch_size=4)
    assert all(len(w._plans) == 1 for w in workers)
    del loader
    gc.collect()
    assert all(len(w._plans) == 0 for w in workers)
    del fed
    gc.collect()
    assert all(w.objects == {} for w in workers)


def test_repr_and_dataset(fed):
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True)
    assert loader.dataset is fed and loader.workers == fed.workers
    assert repr(loader) == "FederatedDataLoader(2 workers, 6 batches of 4, shuffle=True, order='sequential')"


def test_tensor_dataset_fast_path_equals_default_collate_per_sample():
    from torch.utils.data import Subset, TensorDataset, default_collate

    from lightning_fed.data.loader import _make_batch

    data = TensorDataset(torch.randn(30, 3), torch.arange(30), torch.randint(0, 5, (30, 2), dtype=torch.uint8))
    shard = Subset(Subset(data, list(range(10, 30))), [7, 3, 11, 0, 19, 5])
    positions = torch.tensor([5, 0, 2, 2])
    fast = _make_batch(shard, positions, collate_fn=default_collate)
    slow = default_collate([shard[i] for i in positions.tolist()])
    assert type(fast) is type(slow) and len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and torch.equal(a, b)

    class Doubled(TensorDataset):  # a subclass may change __getitem__: no fast path
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return 2 * x, y

    doubled = Doubled(torch.ones(4, 2), torch.arange(4))
    assert torch.equal(_make_batch(doubled, torch.tensor([1, 2]), collate_fn=default_collate)[0], 2 * torch.ones(2, 2))


@pytest.mark.parametrize("collate", ["default", "custom"])
def test_gather_batches_equals_one_gather_per_batch(fed, collate):
    # a vectorized chunk reads each worker's batches in one visit: the same batches as one gather each
    from torch.utils.data import default_collate

    collate_fn = default_collate if collate == "default" else (lambda samples: {"x": default_collate(samples)[0]})
    loader = FederatedDataLoader(fed, batch_size=4, shuffle=True, seed=1, collate_fn=collate_fn)
    worker = fed.workers[0]
    positions = list(loader.batch_positions(worker, epoch=0))  # 4, 4, 3 positions: a short last batch
    assert [len(p) for p in positions] == [4, 4, 3]
    positions.insert(1, torch.zeros(0, dtype=torch.long))  # a Poisson draw may take no sample (DP-SGD's batches)
    pointer = fed[worker.id]
    with pointer.location.session(pointer) as shard:  # at the worker, as the vectorized backend reads it
        together = loader.gather_batches(shard, positions)
        apart = [loader.gather(shard, p) for p in positions]
    assert len(together) == len(apart) == 4
    for a, b in zip(together, apart):
        assert type(a) is type(b) and list(leaves(a))
        assert all(torch.equal(u, v) and u.dtype == v.dtype for u, v in zip(leaves(a), leaves(b), strict=True))
    assert [len(next(iter(leaves(b)))) for b in together] == [4, 0, 4, 3]  # zero rows, one sample's other dims
