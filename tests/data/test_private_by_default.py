"""Workers that ``federate`` and ``FederatedDataModule`` give data keep it: ``.get()`` of a batch is refused (and
audited) unless ``policy="open"`` (or a policy that releases data) says otherwise; ``policy=None`` keeps each
worker's own policy; a bad ``policy`` fails before anything is sent; an open policy warns once per process."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import lightning_fed as sy
import lightning_fed.privacy.policy as policy_module
from lightning_fed.data import FederatedDataLoader, FederatedDataModule, federate
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.privacy import DataAccessPolicy

ROOT = Path(__file__).resolve().parents[2]
OPEN_WARNING = r"open data-access policy \(release_data=True\)"


def make_dataset(n: int = 8) -> TensorDataset:
    return TensorDataset(torch.arange(n * 2, dtype=torch.float32).reshape(n, 2), torch.arange(n) % 2)


@pytest.fixture
def warn_again(monkeypatch):
    """Forget that this process already warned about an open policy (the warning is once per process)."""
    monkeypatch.setattr(policy_module, "_warned_open", False)


def first_batch(fed) -> tuple[sy.PointerTensor, sy.PointerTensor]:
    return next(iter(FederatedDataLoader(fed, batch_size=4)))


def assert_refused(worker: sy.VirtualWorker, ptr: sy.PointerTensor) -> None:
    with pytest.raises(PermissionDeniedError, match=rf"worker '{worker.id}' refuses to release object .*\(data, shape"):
        ptr.get()
    refused = worker.audit_log.refused[-1]
    assert (refused.obj_id, refused.command, refused.kind) == (ptr.id_at_location, "get", "data")
    assert ptr.id_at_location in worker.objects  # refused: the batch is still at the worker
    assert len(worker.audit_log) == 0  # nothing left


# -- the default ------------------------------------------------------------------------------------------------
def test_federate_by_default_refuses_get_of_a_batch_and_audits_it():
    alice, bob = sy.VirtualWorker(id="pd-alice"), sy.VirtualWorker(id="pd-bob")
    fed = federate(make_dataset(), (alice, bob), seed=0)
    assert alice.policy == bob.policy == DataAccessPolicy.strict()
    for x, y in FederatedDataLoader(fed, batch_size=4):
        assert_refused(x.location, x)
        assert_refused(y.location, y)
    x, _ = first_batch(fed)
    assert float(x.sum().get()) == float(make_dataset().tensors[0][fed.partition[0]].sum())  # a scalar may leave
    assert [r.rule for r in alice.audit_log] == ["release_scalars"]


def test_federated_datamodule_workers_from_ids_are_strict_by_default():
    dm = FederatedDataModule.from_datasets(make_dataset(), workers=["pd-dm-a", "pd-dm-b"], batch_size=4)
    assert dm.policy is None and dm.hparams["federated"]["policy"] is None
    dm.setup("fit")
    assert [w.policy for w in dm.workers] == [DataAccessPolicy.strict()] * 2
    batches = list(dm.train_dataloader())
    assert {x.location.id for x, _ in batches} == {"pd-dm-a", "pd-dm-b"}
    for x, y in batches:
        assert_refused(x.location, x)
        assert_refused(x.location, y)


# -- opting out ---------------------------------------------------------------------------------------------------
def test_open_policy_releases_batches_audited_and_warns(warn_again):
    alice = sy.VirtualWorker(id="pd-open")
    with pytest.warns(UserWarning, match=OPEN_WARNING):
        fed = federate(make_dataset(), [alice], policy="open")
    assert alice.policy == DataAccessPolicy.open()
    x, y = first_batch(fed)
    ids = (x.id_at_location, y.id_at_location)
    assert torch.equal(x.get(), make_dataset().tensors[0][:4]) and y.get().tolist() == [0, 1, 0, 1]
    assert [(r.obj_id, r.command, r.kind, r.rule) for r in alice.audit_log] == [
        (ids[0], "get", "data", "release_data"),
        (ids[1], "get", "data", "release_data"),
    ]
    assert alice.audit_log.refused == []


def test_open_policy_on_the_datamodule_warns_at_construction_and_applies_at_setup(warn_again):
    with pytest.warns(UserWarning, match=OPEN_WARNING):
        dm = FederatedDataModule.from_datasets(make_dataset(), workers=["pd-dmo-a"], batch_size=4, shuffle=False,
                                               policy="open")  # fmt: skip
    assert dm.hparams["federated"]["policy"] == "open"
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert torch.equal(x.get(), make_dataset().tensors[0][:4])
    assert dm.workers[0].audit_log[0].rule == "release_data"


def test_an_open_policy_warns_once_per_process():
    script = textwrap.dedent(
        """
        import torch, lightning_fed as sy
        from torch.utils.data import TensorDataset
        from lightning_fed.data import FederatedDataModule
        ds = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
        sy.federate(ds, [sy.VirtualWorker(id="a")], policy="open")
        sy.federate(ds, [sy.VirtualWorker(id="b")], policy="open")
        FederatedDataModule.from_datasets(ds, workers=["c"], policy="open").setup("fit")
        """
    )
    done = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("open data-access policy (release_data=True)") == 1, done.stderr


def test_a_policy_object_is_applied_to_every_worker():
    keep_scalars = DataAccessPolicy(release_scalars=False)
    workers = [sy.VirtualWorker(id="pd-obj-a"), sy.VirtualWorker(id="pd-obj-b")]
    fed = federate(make_dataset(), workers, policy=keep_scalars)
    assert [w.policy for w in workers] == [keep_scalars, keep_scalars]
    x, _ = first_batch(fed)
    with pytest.raises(PermissionDeniedError, match="release_scalars=False"):
        x.sum().get()


def test_strict_overrides_an_open_worker_before_its_shard_arrives(warn_again):
    with pytest.warns(UserWarning, match=OPEN_WARNING):
        worker = sy.VirtualWorker(id="pd-was-open", policy=DataAccessPolicy(release_data=True))
    fed = federate(make_dataset(), [worker], policy="strict")
    assert worker.policy == DataAccessPolicy.strict()
    x, _ = first_batch(fed)
    assert_refused(worker, x)


# -- None keeps each worker's own ---------------------------------------------------------------------------------
def test_policy_none_keeps_each_workers_own_policy(warn_again):
    mine = DataAccessPolicy(release_data=True)  # this worker's operator released its data
    with pytest.warns(UserWarning, match=OPEN_WARNING):
        public, private = sy.VirtualWorker(id="pd-own-public", policy=mine), sy.VirtualWorker(id="pd-own-private")
    fed = federate(make_dataset(), [public, private])
    assert public.policy is mine and private.policy == DataAccessPolicy.strict()
    batches = {x.location.id: x for x, _ in FederatedDataLoader(fed, batch_size=4)}
    assert batches["pd-own-public"].get().shape == (4, 2)
    assert_refused(private, batches["pd-own-private"])


def test_the_same_policy_again_keeps_the_workers_labels_and_audit_log():
    worker = sy.VirtualWorker(id="pd-same")
    mine = sy.send(torch.ones(2), worker)  # sent by the owner: public
    assert mine.get().tolist() == [1.0, 1.0]
    kept = sy.send(torch.zeros(2), worker)
    federate(make_dataset(), [worker], policy="strict")  # already strict: not set again
    assert [r.rule for r in worker.audit_log] == ["public"]
    assert kept.get().tolist() == [0.0, 0.0]  # still public (a new policy would count it private)


# -- bad values fail first ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["private", "STRICT", True, 0, {"release_data": True}])
def test_a_bad_policy_fails_before_anything_is_sent(bad):
    worker = sy.VirtualWorker(id="pd-bad")
    with pytest.raises(FederatedConfigError, match=rf"`policy={bad!r}` is not valid: pass 'strict' \(the default"):
        federate(make_dataset(), [worker], policy=bad)
    assert worker.objects == {} and worker.policy == DataAccessPolicy.strict()
    with pytest.raises(FederatedConfigError, match=rf"`policy={bad!r}` is not valid"):
        FederatedDataModule.from_datasets(make_dataset(), workers=2, policy=bad)


def test_a_sent_federated_dataset_takes_the_policy_too():
    sent = [sy.VirtualWorker(id=f"pd-sent-{i}") for i in range(2)]
    parts = [sy.BaseDataset(torch.arange(8.0).reshape(4, 2), torch.tensor([0, 1, 0, 1])).send(w) for w in sent]
    keep_scalars = DataAccessPolicy(release_scalars=False)
    fed = sy.FederatedDataset(parts, policy=keep_scalars)
    assert [w.policy for w in sent] == [keep_scalars, keep_scalars]
    x, _ = first_batch(fed)
    assert_refused(sent[0], x)  # the worker's policy changed: what it held counts as private from then on


def test_data_you_sent_stays_yours_when_the_policy_does_not_change():
    worker = sy.VirtualWorker(id="pd-sent-mine")
    part = sy.BaseDataset(torch.arange(8.0).reshape(4, 2), torch.tensor([0, 1, 0, 1])).send(worker)
    x, _ = first_batch(sy.FederatedDataset([part], policy="strict"))  # the worker is strict already
    assert torch.equal(x.get(), torch.arange(8.0).reshape(4, 2))


def test_readmes_private_by_default_example_runs_as_it_says(warn_again, capsys):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Private by default:.*?```python\n(.*?)```", text, re.S)
    assert block, "README lost its private-by-default example"
    with pytest.warns(UserWarning, match=OPEN_WARNING):
        scope: dict = {}
        exec(compile(block.group(1), "README.md", "exec"), scope)  # our own README
    assert "worker 'alice' refuses to release object" in capsys.readouterr().out
    assert scope["public"].policy == DataAccessPolicy.open()


def test_a_federated_dataset_of_pointers_to_private_batches_keeps_them_private():
    worker = sy.VirtualWorker(id="pd-launder")
    x, y = first_batch(federate(make_dataset(), [worker]))
    rebuilt = sy.FederatedDataset([sy.BaseDataset(x, y)])  # the worker's own batch, wrapped again
    x2, _ = first_batch(rebuilt)
    assert_refused(worker, x2)
