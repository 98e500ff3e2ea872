"""Attacks on federated *training* (FederatedStrategy), with the default settings: checkpoints, logs, per-worker
metrics, resumes. Each test attempts the route as an attacker would and checks that it is refused with a clear
error, or that what leaves is released by a named rule in the worker's audit log."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedStrategy
from lightning_fed.data import FederatedDataLoader, federate
from lightning_fed.exceptions import CheckpointMismatchError, FederatedConfigError, SealedStateError
from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import trainer

FEATURES = 4


class _DM(pl.LightningDataModule):
    """One private sample per worker (the attacker's best case: an update or a buffer is one sample's gradient)."""

    def __init__(self, ids=("w0", "w1", "w2"), policy=None, n_per_worker: int = 1, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = len(ids) * n_per_worker
        self.x = torch.randn(n, FEATURES, generator=g)
        self.y = torch.arange(n) % 2
        self.workers = [sy.VirtualWorker(id=i, policy=policy or "strict") for i in ids]
        fed = federate(TensorDataset(self.x, self.y), self.workers, "iid", seed=seed)
        self.loader = FederatedDataLoader(fed, batch_size=n_per_worker, shuffle=False, seed=seed)

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader


def _tensors(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out)
    return out


def _recovered(checkpoint: dict, samples: torch.Tensor) -> int:
    """The attack: for a linear layer on one sample, a gradient-like buffer's weight row divided by its bias entry
    is the sample. Try every (matrix, vector) pair in the checkpoint; count the private samples recovered."""
    tensors = [t.detach().double() for t in _tensors(checkpoint, []) if t.is_floating_point()]
    mats = [t for t in tensors if t.dim() == 2 and t.shape[1] == FEATURES]
    vecs = [t for t in tensors if t.dim() == 1]
    found = set()
    for w in mats:
        for b in vecs:
            if b.shape[0] != w.shape[0]:
                continue
            for i in range(w.shape[0]):
                if b[i].abs() < 1e-12:
                    continue
                candidate = w[i] / b[i]
                for k, x in enumerate(samples.double()):
                    if torch.allclose(candidate, x, rtol=1e-4, atol=1e-5):
                        found.add(k)
    return len(found)


@pytest.mark.parametrize(
    ("optimizer", "privacy"),
    [("momentum", None), ("adam", DPConfig(noise_multiplier=0.5, clip_norm=10.0, noise="distributed"))],
    ids=["secagg-momentum", "secagg-dp-adam"],
)
def test_checkpoint_gives_back_no_private_sample(tmp_path, optimizer, privacy):
    """The issue's finding: with secure aggregation (and DP), the momentum buffers (Adam's exp_avg) in last.ckpt
    gave back 3 of 3 workers' samples exactly. Now every worker's optimizer state is sealed for that worker."""
    torch.manual_seed(0)
    data = _DM()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    strategy = FederatedStrategy(secure_aggregation=True, privacy=privacy)
    model = BoringClassifier(FEATURES, 2, lr=0.1, optimizer=optimizer)
    trainer(max_epochs=1, strategy=strategy, enable_checkpointing=True, callbacks=[ckpt]).fit(model, datamodule=data)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert _recovered(checkpoint, data.x) == 0
    assert set(checkpoint["federated"]["worker_states"]) == {"w0", "w1", "w2"}  # sealed, each for its worker
    # the oracle can fail: the attack recovers every sample from the states in the clear, as the workers hold them
    opened = sy.strategies.checkpoint.open_worker_states(
        checkpoint["federated"]["worker_states"],
        sy.strategies.checkpoint.digest(checkpoint["federated"]["fingerprint"]),
    )
    assert _recovered(opened, data.x) == 3


def _fit(tmp_path, data, strategy, epochs=1, ckpt_path=None, model=None, **kwargs):
    torch.manual_seed(0)
    model = model or BoringClassifier(FEATURES, 2, lr=0.1, optimizer="momentum")
    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    trainer(max_epochs=epochs, strategy=strategy, enable_checkpointing=True, callbacks=callbacks, **kwargs).fit(
        model, datamodule=data, ckpt_path=ckpt_path
    )
    return model


def test_sealed_states_open_only_for_their_worker(tmp_path, monkeypatch):
    _fit(tmp_path, _DM(n_per_worker=2), FederatedStrategy())
    path = tmp_path / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    states = checkpoint["federated"]["worker_states"]
    states["w0"], states["w1"] = states["w1"], states["w0"]  # a server swapping two workers' states
    torch.save(checkpoint, tmp_path / "swapped.ckpt")
    with pytest.raises(SealedStateError, match="not sealed for this worker and federation"):
        _fit(tmp_path / "a", _DM(n_per_worker=2), FederatedStrategy(), 2, str(tmp_path / "swapped.ckpt"))
    monkeypatch.setenv("LIGHTNING_FED_KEY_DIR", str(tmp_path / "elsewhere"))  # the file without the workers' keys
    with pytest.raises(SealedStateError, match="another key file"):
        _fit(tmp_path / "b", _DM(n_per_worker=2), FederatedStrategy(), 2, str(path))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"ids": ("w0", "w1", "w9")},
            r"workers differ \(checkpoint: \['w0', 'w1', 'w2'\]; this run: \['w0', 'w1', 'w9'",
        ),
        ({"aggregation": "fedavgm"}, r"aggregation differ \(checkpoint: 'FedAvg\(\)'; this run: 'FedAvgM"),
        (
            {"secure_aggregation": True},
            r"secure aggregation differ \(checkpoint: None; this run: .SecureAggregationConf",
        ),
        ({"mode": "follow"}, r"mode differ \(checkpoint: 'fedavg'; this run: 'follow'\)"),
        ({"privacy": DPConfig(noise_multiplier=1.0, clip_norm=1.0)}, r"privacy settings differ \(checkpoint: None"),
    ],
)
def test_resuming_another_federations_checkpoint_is_refused(tmp_path, change, match):
    _fit(tmp_path, _DM(n_per_worker=2), FederatedStrategy())
    ids = change.pop("ids", ("w0", "w1", "w2"))
    with pytest.raises(CheckpointMismatchError, match=match):
        _fit(tmp_path / "r", _DM(ids, n_per_worker=2), FederatedStrategy(**change), 2, str(tmp_path / "last.ckpt"))


def test_a_plain_lightning_checkpoint_resumes_only_as_weights_and_only_when_asked(tmp_path):
    torch.manual_seed(0)
    data = _DM(n_per_worker=4)
    plain = BoringClassifier(FEATURES, 2, lr=0.1)
    x, y = data.x, data.y
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=4)
    trainer(max_epochs=3, enable_checkpointing=True, default_root_dir=tmp_path).fit(plain, loader)
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"plain Lightning checkpoint .*accept_plain_checkpoint=True"):
        _fit(tmp_path / "a", data, FederatedStrategy(), 2, str(path))

    seen = {}

    class Start(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["epoch"] = trainer.current_epoch
            seen["weight"] = module.net[0].weight.detach().clone()

    strategy = FederatedStrategy(accept_plain_checkpoint=True)
    with pytest.warns(UserWarning, match="starts from its weights"):
        trainer(max_epochs=2, strategy=strategy, callbacks=[Start()]).fit(
            BoringClassifier(FEATURES, 2, lr=0.1), datamodule=data, ckpt_path=str(path)
        )
    assert torch.equal(seen["weight"], plain.net[0].weight.detach())  # the plain checkpoint's weights
    assert seen["epoch"] == 0 and strategy.round_index == 2  # Lightning's and the federation's counters afresh
    with pytest.raises(FederatedConfigError, match="`accept_plain_checkpoint='yes'` is not valid"):
        FederatedStrategy(accept_plain_checkpoint="yes")


def test_per_worker_losses_stay_when_the_policy_keeps_scalars(tmp_path):
    """The issue's finding: per-worker losses were logged although the policy forbids releasing scalars (with one
    sample per worker they are per-sample losses)."""
    logged: dict[str, float] = {}

    class Recorder(pl.loggers.logger.DummyLogger):
        def log_metrics(self, metrics, step=None):
            logged.update(metrics)

    keep = DataAccessPolicy(release_scalars=False)
    data = _DM(policy=keep)
    data.workers[0].set_policy("strict")  # w0 releases its scalars, w1 and w2 keep theirs
    strategy = FederatedStrategy()
    _fit(tmp_path, data, strategy, 2, logger=Recorder())
    assert "train_loss/w0" in logged
    assert not any(k.startswith(("train_loss/w1", "train_loss/w2")) for k in logged), logged
    summary = strategy.worker_summary()
    assert summary["w0"]["last_loss"] is not None and summary["w1"]["last_loss"] is None
    stats = torch.load(tmp_path / "last.ckpt", weights_only=False)["federated"]["stats"]
    assert stats["w1"]["last_loss"] is None and stats["w2"]["last_loss"] is None
    w0_log = data.workers[0].audit_log
    assert [r.rule for r in w0_log if r.command == "log"] == ["release_scalars"] * 2  # once a round, audited


def test_every_update_that_leaves_a_worker_is_audited_with_its_rule(tmp_path):
    data = _DM(n_per_worker=2)
    _fit(tmp_path, data, FederatedStrategy(), 2)
    for worker in data.workers:
        updates = worker.audit_log.filter(command="aggregate")
        assert [(r.kind, r.rule, r.destination) for r in updates] == [("update", "release_model", "server")] * 2


def test_a_worker_that_keeps_its_updates_sends_them_only_masked(tmp_path):
    keep = DataAccessPolicy(release_model=False)
    with pytest.raises(FederatedConfigError, match=r"worker 'w0' keeps its model updates .*secure_aggregation=True"):
        _fit(tmp_path, _DM(policy=keep, n_per_worker=2), FederatedStrategy())
    data = _DM(policy=keep, n_per_worker=2)
    _fit(tmp_path / "s", data, FederatedStrategy(secure_aggregation=True))
    assert [r.rule for r in data.workers[1].audit_log.filter(command="aggregate")] == ["secure_aggregation"]


class _FailsAt(BoringClassifier):
    """Worker w1 raises at its second local batch."""

    def __init__(self) -> None:
        super().__init__(FEATURES, 2, lr=0.5)
        self.calls = 0

    def training_step(self, batch, batch_idx):
        from lightning_fed.workers.base import current_worker

        if current_worker().id == "w1":
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("disk full")
        return super().training_step(batch, batch_idx)


def test_after_a_failed_worker_the_module_holds_the_global_model(tmp_path):
    """The issue's finding: after a worker raised mid-round (tolerate_failures=True), the module held that worker's
    partial local model; a test() or save in between used it."""
    seen = []

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            rounds = trainer.strategy.rounds
            if trainer.strategy.rounds.failures.counts("w1")["failed"] and not seen:
                params = [p.detach() for p in module.parameters()]
                seen.append(all(torch.equal(p, g) for p, g in zip(params, rounds.global_)))

    data = _DM(ids=("w0", "w1"), n_per_worker=3)
    data.loader = FederatedDataLoader(data.loader.federated_dataset, batch_size=1, shuffle=False)
    strategy = FederatedStrategy(tolerate_failures=True)
    trainer(max_epochs=1, strategy=strategy, callbacks=[Check()]).fit(_FailsAt(), datamodule=data)
    assert seen == [True]
