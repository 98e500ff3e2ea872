"""FederatedMNISTDataModule: flat arguments for the CLI, validated, on tiny IDX files."""

from __future__ import annotations

import warnings

import pytest

import lightning_fed.privacy.policy as policy_module
from lightning_fed import FederatedConfigError, PointerTensor
from lightning_fed.datasets import FederatedMNISTDataModule
from lightning_fed.exceptions import PermissionDeniedError
from lightning_fed.privacy import DataAccessPolicy
from tests.helpers.mnist_files import write_mnist_raw


def test_two_schools_get_the_training_set_as_pointers(tmp_path):
    write_mnist_raw(tmp_path, num_train=100, num_test=20)
    dm = FederatedMNISTDataModule(root=tmp_path, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.federated_dataset.lengths == {"westside": 50, "grapevine": 50}
    data, _target = next(iter(dm.train_dataloader()))
    assert type(data) is PointerTensor and data.location.id == "westside" and tuple(data.shape) == (16, 1, 28, 28)
    assert dm.hparams.federated["workers"] == ["westside", "grapevine"]
    assert dm.datamodule.hparams.num_workers == 0  # the inner MNISTDataModule kept its own hyper-parameters


@pytest.mark.parametrize("policy", [None, "strict", "open"])
def test_the_schools_images_stay_with_them_unless_the_policy_is_open(tmp_path, monkeypatch, policy):
    monkeypatch.setattr(policy_module, "_warned_open", False)  # the open warning is once per process
    write_mnist_raw(tmp_path, num_train=40, num_test=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = FederatedMNISTDataModule(root=tmp_path, batch_size=8, policy=policy)
    opened = [w for w in caught if "open data-access policy" in str(w.message)]
    assert len(opened) == (policy == "open")
    dm.prepare_data()
    dm.setup("fit")
    data, target = next(iter(dm.train_dataloader()))
    school = data.location
    assert school.policy == (DataAccessPolicy.open() if policy == "open" else DataAccessPolicy.strict())
    if policy == "open":
        assert data.get().shape == (8, 1, 28, 28) and school.audit_log[-1].rule == "release_data"
    else:
        with pytest.raises(PermissionDeniedError, match=r"worker 'westside' refuses to release object .*\(data"):
            target.get()
        assert school.audit_log.refused[-1].obj_id == target.id_at_location


def test_a_bad_policy_is_named_before_anything_loads(tmp_path):
    with pytest.raises(FederatedConfigError, match=r"`policy='public'` is not valid: pass 'strict' \(the default"):
        FederatedMNISTDataModule(root=tmp_path / "missing", policy="public")


def test_dirichlet_and_shards_arguments(tmp_path):
    assert FederatedMNISTDataModule(tmp_path, partition="dirichlet", alpha=0.3).partition_args == {"alpha": 0.3}
    dm = FederatedMNISTDataModule(tmp_path, workers=4, partition="shards", shards_per_worker=2)
    assert dm.partition_args == {"shards_per_worker": 2} and len(dm.workers) == 4
    dm = FederatedMNISTDataModule(tmp_path, partition="quantity_skew", distribution="powerlaw", power=1.2, min_size=3)
    assert dm.partition_args == {"distribution": "powerlaw", "power": 1.2, "min_size": 3}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"partition": "dirichlet"},
            r"Partitioner 'dirichlet' needs `alpha`, which was not given: pass it, e.g. alpha=",
        ),
        ({"partition": "iid", "alpha": 0.3}, r"Partitioner 'iid' does not take alpha=0.3: remove it"),
        ({"partition": "shards", "alpha": 0.3}, r"'shards' does not take alpha=0.3.*\['shards_per_worker'\]"),
        ({"partition": "iid", "shards_per_worker": 2}, r"Partitioner 'iid' does not take shards_per_worker=2"),
        ({"partition": "quantity_skew", "sigma": 2.0, "power": 1.2, "alpha": 1.0}, r"does not take alpha=1.0"),
    ],
)
def test_partition_arguments_that_do_not_fit(tmp_path, kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedMNISTDataModule(tmp_path, **kwargs)
