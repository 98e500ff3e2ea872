"""Tests of ``federate``, ``FederatedDataset``, ``DatasetPointer`` and ``dataset_labels``, errors included."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset

import lightning_fed as sy
from lightning_fed.data import DatasetPointer, FederatedDataset, dataset_labels, federate
from lightning_fed.data.federated import make_workers
from lightning_fed.exceptions import FederatedConfigError


def labelled(n: int = 40, classes: int = 4) -> TensorDataset:
    return TensorDataset(torch.randn(n, 2), torch.arange(n) % classes)


class Unlabelled(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


class WithTargets(Dataset):
    def __init__(self, targets) -> None:
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> int:
        return i


@pytest.fixture
def workers() -> list[sy.VirtualWorker]:
    return [sy.VirtualWorker(id=name) for name in ("alice", "bob", "carol")]


@pytest.mark.parametrize(("partition", "args"), [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {})])
def test_every_sample_goes_to_exactly_one_worker_and_the_partition_is_seeded(workers, partition, args):
    data = labelled(48)
    fed = federate(data, workers, partition, seed=4, **args)
    assert sorted(i for part in fed.partition for i in part) == list(range(48))
    assert len(fed) == 48 and sum(fed.lengths.values()) == 48
    assert fed.partition == federate(data, workers, partition, seed=4, **args).partition
    assert fed.partition != federate(data, workers, partition, seed=5, **args).partition
    assert fed.label_histogram.sum(axis=0).tolist() == [12, 12, 12, 12]
    assert fed.label_histogram.sum(axis=1).tolist() == [len(p) for p in fed.partition]


def test_each_worker_holds_its_shard_as_a_lazy_view_and_me_holds_pointers(workers):
    data = labelled(9)
    fed = federate(data, workers)
    for worker, indices in zip(workers, fed.partition, strict=True):
        pointer = fed[worker.id]
        assert isinstance(pointer, DatasetPointer) and pointer.location is worker and len(pointer) == len(indices)
        shard = worker.objects[pointer.id_at_location]
        assert isinstance(shard, Subset) and shard.dataset is data and shard.indices == indices
        assert repr(pointer) == f"(Wrapper)>[DatasetPointer | me -> {worker.id}:{pointer.id_at_location}, 3 samples]"
    assert sy.me.objects == {}
    assert repr(fed) == "FederatedDataset(9 samples over workers ['alice', 'bob', 'carol'])"
    with pytest.raises(KeyError, match=r"no worker 'dave'.*workers: \['alice', 'bob', 'carol'\]"):
        fed["dave"]
    del fed, pointer
    gc.collect()
    assert all(w.objects == {} for w in workers)  # dropping the pointers freed the shards


def test_summary_is_a_table_of_samples_and_labels(workers):
    data = labelled(8, classes=2)
    fed = FederatedDataset(data, workers[:2], [[0, 1, 2], [3, 4, 5, 6, 7]], labels=data.tensors[1])
    assert fed.summary().splitlines() == [
        "      worker  samples      0     1",
        "       alice        3      2     1",
        "         bob        5      2     3",
    ]
    no_labels = FederatedDataset(Unlabelled(), workers[:2], [list(range(5)), list(range(5, 12))])
    assert no_labels.label_histogram is None
    assert no_labels.summary().splitlines()[1:] == ["       alice        5", "         bob        7"]


def test_summary_of_many_workers_shows_the_first_rows_and_how_many_more():
    many = make_workers([f"site{i}" for i in range(25)])
    data = labelled(50, classes=2)
    fed = FederatedDataset(data, many, [[2 * i, 2 * i + 1] for i in range(25)], labels=data.tensors[1])
    lines = fed.summary().splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[20].split()[0] == "site19"
    assert lines[-1] == "... and 5 more workers (FederatedDataset.summary(max_rows=None): all)"
    everything = fed.summary(max_rows=None).splitlines()
    assert len(everything) == 26 and everything[-1].split()[:2] == ["site24", "2"]
    assert fed.summary(max_rows=3).splitlines()[-1].startswith("... and 22 more workers")


def test_dataset_federate_through_the_hook(workers):
    hook = sy.TorchHook(torch)
    try:
        fed = labelled(12).federate(workers[:2])
        assert fed.lengths == {"alice": 6, "bob": 6}
        assert fed.partition == federate(labelled(12), workers[:2]).partition
    finally:
        hook.unhook()


def test_explicit_labels_serve_a_dataset_without_targets(workers):
    labels = torch.arange(12) % 3
    fed = federate(Unlabelled(), workers, "dirichlet", labels=labels, alpha=0.3, seed=1)
    assert fed.label_histogram.sum(axis=0).tolist() == [4, 4, 4]
    with pytest.raises(FederatedConfigError, match=r"`labels` has 5 entries but `num_samples=12`"):
        federate(Unlabelled(), workers, "dirichlet", labels=[0, 1, 0, 1, 0], alpha=1.0)


def test_dataset_labels_finds_targets_subsets_and_tensor_datasets():
    assert dataset_labels(WithTargets([2, 0, 1])).tolist() == [2, 0, 1]
    assert dataset_labels(Subset(WithTargets(torch.tensor([5, 6, 7, 8])), [3, 1])).tolist() == [8, 6]
    assert dataset_labels(TensorDataset(torch.randn(3, 2), torch.tensor([1, 0, 1]))).tolist() == [1, 0, 1]
    assert dataset_labels(TensorDataset(torch.randn(3, 2), torch.randn(3))) is None  # regression targets
    assert dataset_labels(WithTargets(["cat", "dog"])) is None
    assert dataset_labels(Unlabelled()) is None


def test_make_workers_from_a_count_ids_or_objects():
    alice = sy.VirtualWorker(id="alice")
    assert [w.id for w in make_workers(3)] == ["worker_0", "worker_1", "worker_2"]
    made = make_workers([alice, "bob", 7])
    assert made[0] is alice and [w.id for w in made] == ["alice", "bob", 7]
    assert all(type(w) is sy.VirtualWorker for w in made)


# -- bad inputs, through the public entry point -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "partition", "args", "match"),
    [
        (labelled(2), "iid", {}, r"`num_workers=3` is more than the number of samples \(2\).*at most 2 workers"),
        (labelled(), "dirichlet", {"alpha": 0}, r"`alpha=0` is not valid: .* finite number > 0"),
        (labelled(), "dirichlet", {"alpha": -1.0}, r"`alpha=-1.0` is not valid"),
        (labelled(40), "shards", {"shards_per_worker": 2}, r"40 samples.*cannot be cut into.*3 \* 2 = 6.*divides 40"),
        (Unlabelled(), "dirichlet", {"alpha": 1.0}, r"'dirichlet' needs labels but `labels=None`.*'iid'"),
        (Unlabelled(), "shards", {}, r"'shards' needs labels.*`targets` attribute"),
        (Stream(), "iid", {}, r"`dataset` of type Stream has no __len__: .*map-style dataset"),
        (labelled(), "iid", {"alpha": 0.5}, r"Partitioner 'iid' does not take alpha=0.5: remove it.*\[\]"),
        (labelled(), "dirichlet", {"alpah": 1}, r"'dirichlet' does not take alpah=1.*\['alpha', 'min_size'"),
        (
            labelled(),
            "kmeans",
            {},
            r"`partition='kmeans'` is not a known partitioner: known names are 'dirichlet', 'iid'",
        ),
    ],
)
def test_bad_partitions_are_config_errors_naming_the_fix(workers, dataset, partition, args, match):
    with pytest.raises(FederatedConfigError, match=match):
        federate(dataset, workers, partition, **args)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], r"`workers` is empty: pass at least one worker"),
        (0, r"`workers` must be a sequence of workers, got 0"),
        ("alice", r"`workers` must be a sequence of workers, got 'alice'"),
        (["alice"], r"`workers\[0\]='alice'` \(str\) is not a worker: .*VirtualWorker\(id='alice'\)"),
        ([1.5], r"`workers\[0\]=1.5` \(float\) is not a worker: .*VirtualWorker\(id='alice'\)"),
        ([sy.me], r"`workers\[0\]` is the local worker `me`"),
    ],
)
def test_bad_workers_are_config_errors(bad, match):
    with pytest.raises(FederatedConfigError, match=match):
        federate(labelled(), bad)


def test_duplicate_worker_ids_are_refused(workers):
    twin = sy.VirtualWorker(id="alice")
    with pytest.raises(FederatedConfigError, match=r"duplicate ids \['alice'\].*workers=\['alice', 'bob', 'alice'\]"):
        federate(labelled(), [workers[0], workers[1], twin])
    assert all(w.objects == {} for w in workers)  # nothing was sent before the check failed
