"""Issue 16, attempted as an attacker would: every route out of a worker, with the default (strict) policy.

Each attack is refused with a clear error and recorded in the worker's ``audit_log.refused``, or released by a named
rule. The top part is the pointer/worker layer, organised by route; strategy and checkpoint attacks follow at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedStrategy
from lightning_fed.data import FederatedDataLoader, federate
from lightning_fed.exceptions import (
    CheckpointMismatchError,
    FederatedConfigError,
    PermissionDeniedError,
    PointerError,
    SealedStateError,
    WorkerError,
)
from lightning_fed.privacy import DataAccessPolicy
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.messages import CommandMessage, GetMessage, ObjectRef
from tests.strategies.helpers import trainer

SECRET = torch.tensor([[3.0, 1.0, 4.0], [1.0, 5.0, 9.0], [2.0, 6.0, 5.0], [3.0, 5.0, 8.0]])
LABELS = torch.tensor([2, 7, 1, 8])


def clinic(policy: Any = "strict", worker_id: str = "clinic") -> tuple[VirtualWorker, Any, Any, Any]:
    """A worker made the attacker's way (``federate``, default policy), its shard and one batch (data, target)."""
    worker = VirtualWorker(id=worker_id, policy=policy)
    fed = sy.federate(TensorDataset(SECRET.clone(), LABELS.clone()), [worker])
    data, target = next(iter(sy.FederatedDataLoader(fed, batch_size=4)))
    return worker, fed, data, target


def refused(worker: VirtualWorker, attack: Callable[[], Any], match: str = r"refuses to release object \d+") -> None:
    """``attack()`` raises PermissionDeniedError naming the worker, and adds one record to ``audit_log.refused``."""
    before = len(worker.audit_log.refused)
    with pytest.raises(PermissionDeniedError, match=rf"worker '{worker.id}' " + match):
        attack()
    assert len(worker.audit_log.refused) == before + 1


# -- route: get / to_here / copy().get() on what the worker holds -------------------------------------------------------
def test_get_of_the_shard_and_of_a_batch_is_refused() -> None:
    worker, fed, data, target = clinic()
    shard_id = fed["clinic"].id_at_location
    refused(worker, lambda: me._send(GetMessage(shard_id), worker), rf"refuses to release object {shard_id} \(data\)")
    refused(worker, data.get, r"refuses to release object \d+ \(data, shape \(4, 3\)\) through get\(\)")
    refused(worker, target.to_here, r".* through to_here\(\): it is private to the worker")
    refused(worker, lambda: data.copy().get())
    refused(worker, lambda: sy.get(data * 1))
    assert len(worker.audit_log) == 0 and data.is_live


def test_search_pointers_to_private_tensors_are_refused() -> None:
    worker, _, data, _ = clinic()
    (found,) = worker.search(str(data.id_at_location))
    refused(worker, found.get)
    assert found.location is worker and data.id_at_location in worker.objects


# -- route: aliases of public memory written with private data ----------------------------------------------------------
ALIASES: dict[str, Callable[[Any], Any]] = {
    "view": lambda p: p.view(4, 3),
    "slice": lambda p: p[0:4],
    "detach": lambda p: p.detach(),
    ".data": lambda p: p.data,
    "view_as": lambda p: p.view_as(p),
    "as_strided": lambda p: p.as_strided((4, 3), (3, 1)),
    "narrow": lambda p: p.narrow(0, 0, 4),
}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_writing_private_data_into_an_alias_of_a_public_tensor_makes_both_private(alias: str) -> None:
    worker, _, data, _ = clinic()
    public = sy.send(torch.zeros(4, 3), worker)
    view = ALIASES[alias](public)
    view.copy_(data)  # the raw batch is now in the public tensor's memory
    refused(worker, view.get)
    refused(worker, public.get)
    refused(worker, lambda: public.expand(2, 4, 3).get())  # a later alias carries the label too


def test_set_and_data_setter_share_private_memory() -> None:
    worker, _, data, _ = clinic()
    a, b = sy.send(torch.zeros(4, 3), worker), sy.send(torch.zeros(4, 3), worker)
    a_id, data_id = a.id_at_location, data.id_at_location  # set_ never reaches __torch_function__: as a message
    me._send(CommandMessage("torch.Tensor.set_", (ObjectRef(a_id), ObjectRef(data_id))), worker)
    refused(worker, a.get)
    b.data = data
    refused(worker, b.get)


def test_grad_setter_with_private_data_is_refused() -> None:
    worker, _, data, _ = clinic()
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    v.grad = data
    refused(worker, v.get)
    refused(worker, lambda: v.grad.get())


@pytest.mark.parametrize(
    "write",
    [
        lambda p, d: torch.mul(d, 1.0, out=p),
        lambda p, d: torch.add(d, 0.0, out=p[0:4]),
        lambda p, d: me._send(
            CommandMessage("torch.Tensor.copy_", (ObjectRef(p.id_at_location), ObjectRef(d.id_at_location))), p.location
        ),
        lambda p, d: p.__setitem__(slice(0, 4), d),
        lambda p, d: p.add_(d),
        lambda p, d: p.unfold(0, 1, 1).copy_(d.unsqueeze(-1)),
    ],
    ids=["out=", "out=view", "message", "__setitem__", "add_", "unfold"],
)
def test_in_place_writes_carry_the_private_label(write: Callable[[Any, Any], Any]) -> None:
    worker, _, data, _ = clinic()
    public = sy.send(torch.zeros(4, 3), worker)
    write(public, data)
    refused(worker, public.get)


# -- route: parameters, gradients, optimizer state ----------------------------------------------------------------------
def test_private_data_copied_into_a_parameter_does_not_leave_with_the_model() -> None:
    worker, _, data, _ = clinic()
    model = sy.send(nn.Linear(3, 4), worker)
    model.weight.data.copy_(data)
    refused(worker, lambda: sy.get(model), r"refuses to release object \d+ \(data, shape \(4, 3\)\)")


def test_a_gradient_of_private_data_is_a_model_update() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(release_model=False))
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    (v * data).sum().backward()  # v.grad == data
    refused(worker, lambda: v.grad.get(), r".*\(update, shape \(4, 3\)\).*release_model=False")
    refused(worker, v.get, r".*\(update, shape \(4, 3\)\).*release_model=False")
    h = v * 1.0
    h.retain_grad()
    (h * data).sum().backward()
    refused(worker, lambda: h.grad.get(), r".*\(update, shape \(4, 3\)\)")

    worker, _, data, _ = clinic()  # the default policy releases model updates, by that rule
    v = sy.send(torch.zeros(4, 3, requires_grad=True), worker)
    (v * data).sum().backward()
    assert v.grad.get().shape == (4, 3)
    assert [(r.kind, r.rule) for r in worker.audit_log] == [("update", "release_model")]


def test_gradients_with_respect_to_private_data_stay_private() -> None:
    worker, _, data, _ = clinic()
    data.requires_grad_(True)
    (data * data).sum().backward()  # data.grad == 2 * data
    refused(worker, lambda: data.grad.get())


def test_optimizer_state_and_running_statistics_are_model_updates() -> None:
    worker, _, data, target = clinic(DataAccessPolicy(release_model=False))
    model = sy.send(nn.Linear(3, 1), worker)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.mse_loss(model(data).squeeze(1), target.float()).backward()
    optimizer.step()
    (momentum,) = [s["momentum_buffer"] for s in optimizer.state.values()][:1]
    refused(worker, momentum.get, r".*\(update, shape \(1, 3\)\).*release_model=False")
    mean, var = sy.send(torch.zeros(3), worker), sy.send(torch.ones(3), worker)
    F.batch_norm(data, mean, var, training=True, momentum=1.0)  # mean == the batch mean
    refused(worker, mean.get, r".*\(update, shape \(3,\)\)")


# -- route: moves -------------------------------------------------------------------------------------------------------
def test_a_private_object_moves_only_by_a_rule_and_arrives_private() -> None:
    worker, _, data, _ = clinic()
    other = VirtualWorker(id="other")
    refused(worker, lambda: data.move(other), r".* through move\(\) to worker 'other'")
    assert other.objects == {}

    worker, _, data, _ = clinic(DataAccessPolicy(allow=lambda r: r.command == "move"), "lenient")
    moved = data.move(other)
    assert moved.location is other and [(r.command, r.rule) for r in worker.audit_log] == [("move", "allow")]
    refused(other, moved.get, r"refuses to release object \d+ \(data, shape \(4, 3\)\)")  # not the owner's data


def test_a_failed_move_strips_nothing_and_releases_nothing() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(allow=lambda r: r.command == "move"))
    gone = VirtualWorker(id="gone")
    gone.place_elsewhere("worker 'gone' is in another process")
    with pytest.raises(PointerError, match="another process"):
        data.move(gone)
    assert data.location is worker and data.id_at_location in worker.objects
    assert len(worker.audit_log) == 0
    refused(worker, data.get)


# -- route: result shapes and plain values ------------------------------------------------------------------------------
SHAPE_ATTACKS: dict[str, Callable[[Any, Any], Any]] = {
    "nonzero": lambda d, t: d.nonzero(),
    "argwhere": lambda d, t: torch.argwhere(d > 2),
    "unique": lambda d, t: torch.unique(d),
    "unique_consecutive": lambda d, t: torch.unique_consecutive(t),
    "masked_select": lambda d, t: torch.masked_select(d, d > 4),
    "bool mask": lambda d, t: d[d > 4],
    "bincount": lambda d, t: torch.bincount(t),
    "repeat_interleave": lambda d, t: torch.repeat_interleave(t),
    "where": lambda d, t: torch.where(d > 4),
    "one_hot": lambda d, t: F.one_hot(t),
    "private dim": lambda d, t: d.sum(dim=t[0] % 2),
    "private size": lambda d, t: d.new_zeros(t[0]),
    "tensor_split": lambda d, t: torch.tensor_split(d.flatten(), t),
}


@pytest.mark.parametrize("attack", list(SHAPE_ATTACKS))
def test_shape_dependent_results_on_private_data_are_refused(attack: str) -> None:
    worker, _, data, target = clinic()
    refused(worker, lambda: SHAPE_ATTACKS[attack](data, target), r"refuses to run \S+ on private inputs: .*"
            r"DataAccessPolicy\(release_shapes=True\)")  # fmt: skip
    assert worker.audit_log.refused[-1].kind == "shape"


def test_release_shapes_lets_them_run_and_audits_each_shape() -> None:
    worker, _, data, _ = clinic(DataAccessPolicy(release_shapes=True))
    found = data.nonzero()
    assert found.shape == (12, 2)
    assert [(r.kind, r.shape, r.rule) for r in worker.audit_log] == [("shape", (12, 2), "release_shapes")]
    refused(worker, found.get)  # the indices themselves stay private


def test_commands_returning_worker_objects_are_refused() -> None:
    worker, _, data, _ = clinic()
    w = sy.send(torch.ones(3, requires_grad=True), worker)
    refused(worker, lambda: (data @ w).grad_fn, r"refuses to run torch.Tensor.grad_fn.__get__ on private inputs: it "
            r"returns a plain MvBackward0")  # fmt: skip  # an autograd node holds the batch it was computed from
    a, b = sy.send(torch.ones(3, requires_grad=True), worker), sy.send(torch.ones(3), worker)
    y = a * b
    b.copy_(data[0])  # y's graph saved b, which now holds private data
    with pytest.raises(WorkerError, match=r"refuses to return the MulBackward0 that torch.Tensor.grad_fn.__get__ made"):
        y.grad_fn


def test_a_public_result_leaves_without_its_graph() -> None:
    worker, _, data, _ = clinic()
    a, b = sy.send(torch.ones(4, 3, requires_grad=True), worker), sy.send(torch.ones(4, 3), worker)
    y = a * b  # b is saved in y's graph
    b.copy_(data)  # ... and now holds the batch
    value = y.get()
    assert value.grad_fn is None and value.requires_grad and torch.equal(value, torch.ones(4, 3))


# -- route: crafted messages --------------------------------------------------------------------------------------------
def test_a_message_cannot_hand_the_worker_an_object_of_the_callers() -> None:
    worker, _, data, _ = clinic()
    stolen: list[Any] = []

    class Spy:
        @classmethod
        def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            stolen.extend(args)
            return 0

    with pytest.raises(WorkerError, match=r"refuses to run torch.add with an argument of type Spy"):
        me._send(CommandMessage("torch.add", (ObjectRef(data.id_at_location), Spy())), worker)
    mine = torch.zeros(4, 3)
    me._send(CommandMessage("torch.Tensor.copy_", (mine, ObjectRef(data.id_at_location))), worker)
    assert stolen == [] and torch.equal(mine, torch.zeros(4, 3))  # the worker wrote into its own copy


# -- route: error messages ----------------------------------------------------------------------------------------------
def test_errors_of_commands_on_private_data_do_not_echo_it() -> None:
    worker, _, _, target = clinic()
    public = sy.send(torch.zeros(5), worker)
    with pytest.raises(WorkerError) as caught:
        public[target * 1000 + 123]  # out of range: torch would name the (private) index
    message = str(caught.value)
    assert message == (
        "worker 'clinic' failed to run torch.Tensor.__getitem__: IndexError (details withheld: its inputs are "
        "private to the worker, and the error message could contain their values)."
    )
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    with pytest.raises(WorkerError, match=r"IndexError: index 7 is out of bounds"):  # public inputs: the details
        public[sy.send(torch.tensor(7), worker)]
    opened, _, _, target = clinic(policy="open", worker_id="open-clinic")  # the data is released anyway: details
    with pytest.raises(WorkerError, match=r"IndexError: index \d+ is out of bounds"):
        sy.send(torch.zeros(5), opened)[target * 1000 + 123]


# -- route: federated training: checkpoints, logs, per-worker metrics, resumes ----------------------------------------
# Training runs at the workers (FederatedStrategy); what leaves is the update (through the aggregator) and the losses.
FEATURES = 4


class _DM(pl.LightningDataModule):
    """One private sample per worker (the attacker's best case: an update or a buffer is one sample's gradient)."""

    def __init__(self, ids=("w0", "w1", "w2"), policy=None, n_per_worker: int = 1, seed: int = 0,
                 batch_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = len(ids) * n_per_worker
        self.x = torch.randn(n, FEATURES, generator=g)
        self.y = torch.arange(n) % 2
        self.workers = [sy.VirtualWorker(id=i, policy=policy or "strict") for i in ids]
        fed = federate(TensorDataset(self.x, self.y), self.workers, "iid", seed=seed)
        self.loader = FederatedDataLoader(fed, batch_size=batch_size or n_per_worker, shuffle=False, seed=seed)

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
    tensors = [t.detach().double().cpu() for t in _tensors(checkpoint, []) if t.is_floating_point()]  # any device
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
            seen["weight"] = module.net[0].weight.detach().cpu().clone()  # on the GPU where there is one

    strategy = FederatedStrategy(accept_plain_checkpoint=True)
    with pytest.warns(UserWarning, match="starts from its weights"):
        trainer(max_epochs=2, strategy=strategy, callbacks=[Start()]).fit(
            BoringClassifier(FEATURES, 2, lr=0.1), datamodule=data, ckpt_path=str(path)
        )
    assert torch.equal(seen["weight"], plain.net[0].weight.detach())  # the plain checkpoint's weights
    assert seen["epoch"] == 0 and strategy.round_index == 2  # Lightning's and the federation's counters afresh
    with pytest.raises(FederatedConfigError, match="`accept_plain_checkpoint='yes'` is not valid"):
        FederatedStrategy(accept_plain_checkpoint="yes")


@pytest.mark.parametrize("vectorize", [False, True], ids=["sequential", "vectorized"])
def test_per_worker_losses_stay_when_the_policy_keeps_scalars(tmp_path, vectorize):
    """The issue's finding: per-worker losses were logged although the policy forbids releasing scalars (with one
    sample per worker they are per-sample losses)."""
    logged: dict[str, float] = {}

    class Recorder(pl.loggers.logger.DummyLogger):
        def log_metrics(self, metrics, step=None):
            logged.update(metrics)

    keep = DataAccessPolicy(release_scalars=False)
    data = _DM(policy=keep)
    data.workers[0].set_policy("strict")  # w0 releases its scalars, w1 and w2 keep theirs
    strategy = FederatedStrategy(vectorize=vectorize)
    _fit(tmp_path, data, strategy, 2, logger=Recorder())
    assert "train_loss/w0" in logged
    assert not any(k.startswith(("train_loss/w1", "train_loss/w2")) for k in logged), logged
    summary = strategy.worker_summary()
    assert summary["w0"]["last_loss"] is not None and summary["w1"]["last_loss"] is None
    stats = torch.load(tmp_path / "last.ckpt", weights_only=False)["federated"]["stats"]
    assert stats["w1"]["last_loss"] is None and stats["w2"]["last_loss"] is None
    w0_log = data.workers[0].audit_log
    assert [r.rule for r in w0_log if r.command == "log"] == ["release_scalars"] * 2  # once a round, audited


def _holds_a_sample(obj: Any, samples: torch.Tensor, depth: int = 8, seen: set[int] | None = None) -> bool:
    """Whether ``obj`` (an object's attributes, lists, dicts, tuples, ``depth`` levels down, each object once) holds
    a tensor with a row equal to one of ``samples``: a worker's batch kept where the attacker can read it."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 0 or obj.numel() % samples.shape[1] or not obj.is_floating_point():
            return False
        rows = obj.detach().reshape(-1, samples.shape[1]).cpu()  # a copy on the GPU counts too
        return bool((rows[:, None, :] == samples[None]).all(-1).any())
    if depth == 0:
        return False
    if isinstance(obj, dict):
        return any(_holds_a_sample(v, samples, depth - 1, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_a_sample(v, samples, depth - 1, seen) for v in obj)
    return hasattr(obj, "__dict__") and _holds_a_sample(vars(obj), samples, depth - 1, seen)


def test_vectorized_workers_keep_no_gathered_batch_after_fit(tmp_path):
    """Vectorized workers read a chunk of each worker's batches at once, in its session: after the fit (finished,
    or stopped in the middle of a cohort) neither the backend nor the checkpoint holds one of those samples."""
    data = _DM(n_per_worker=3, batch_size=1)  # 3 vectorized steps: one chunk
    strategy = FederatedStrategy(vectorize=True)
    _fit(tmp_path, data, strategy, 1)
    assert strategy.backend.fused
    assert not _holds_a_sample(strategy.backend, data.x)
    assert not _holds_a_sample(torch.load(tmp_path / "last.ckpt", weights_only=False), data.x)

    stopped_data, stopped = _DM(n_per_worker=3, batch_size=1), FederatedStrategy(vectorize=True)
    held_mid_cohort: list[bool] = []

    class StopsAtStep(BoringClassifier):  # raises at its second local step, after looking for its samples
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 1:
                held_mid_cohort.append(_holds_a_sample(self.trainer.strategy.backend, stopped_data.x))
                raise ValueError("stopped in the middle of a cohort")
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="stopped in the middle of a cohort"):
        _fit(tmp_path, stopped_data, stopped, 1, model=StopsAtStep(FEATURES, 2, lr=0.1))
    assert held_mid_cohort == [True]  # the oracle can fail: mid-cohort the gathered chunk holds the samples
    assert not _holds_a_sample(stopped.backend, stopped_data.x)


@pytest.mark.parametrize("hooked", [False, True], ids=["moved-directly", "transfer-hook"])
@pytest.mark.parametrize("kw", [{"local_loop": "fused"}, {"parallel_workers": 2}], ids=["fused", "threaded"])
def test_backends_that_gather_their_batches_keep_none_after_fit(tmp_path, kw, hooked):
    data = _DM(n_per_worker=3, batch_size=1)
    seen_mid_step: list[bool] = []

    class PassThroughTransfer(BoringClassifier):  # each real batch goes through Lightning's transfer, at the worker
        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            seen_mid_step.append(_holds_a_sample(batch, data.x))  # the samples stay out of the module's attributes
            return super().training_step(batch, batch_idx)

    strategy = FederatedStrategy(**kw)
    _fit(tmp_path, data, strategy, 1, model=(PassThroughTransfer if hooked else BoringClassifier)(FEATURES, 2, lr=0.1))
    assert type(strategy.backend).__name__ == ("FusedBackend" if "local_loop" in kw else "ThreadedBackend")
    if hooked:  # the oracle can fail: the batches the step sees are the worker's samples
        assert seen_mid_step and all(seen_mid_step)
    assert not _holds_a_sample(strategy.backend, data.x)
    assert not _holds_a_sample(torch.load(tmp_path / "last.ckpt", weights_only=False), data.x)


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


# -- route: memory nothing wrote (freed private bytes in a public result) -----------------------------------------------
_SIZE = 4096  # 16 KiB of float32: below glibc's mmap threshold, so a freed block is handed out again at once


def _freed_private_block(worker: VirtualWorker, data: Any) -> None:
    """A private result the size of the next allocation, filled with a marker, then freed at the worker."""
    private = (data.flatten()[:1].expand(_SIZE) * 0.0 + 7.25).contiguous()
    refused(worker, private.get)
    del private


@pytest.mark.parametrize(
    "fresh",
    [
        lambda public: public.new_empty(_SIZE),
        lambda public: public.new_empty_strided((_SIZE // 2,), (2,)),
        lambda public: torch.empty_like(public.expand(_SIZE).contiguous() * 0.0),
        lambda public: public.new_zeros(1).resize_(_SIZE),
    ],
    ids=["new_empty", "new_empty_strided", "empty_like", "resize_"],
)
def test_memory_nothing_wrote_comes_back_zeroed_never_as_freed_private_bytes(fresh: Callable[[Any], Any]) -> None:
    """The audit's attack: free a private result, then ask for uninitialised memory of the same size on a public
    tensor (its labels are public) and take it out. The worker zeroes such memory, so the marker never leaves."""
    worker, _fed, data, _target = clinic()
    public = sy.send(torch.zeros(1), worker)
    for _ in range(5):
        _freed_private_block(worker, data)
        leaked = fresh(public)
        storage = worker.objects[leaked.id_at_location].untyped_storage()  # all of it: as_strided could reach it
        assert torch.frombuffer(bytes(storage), dtype=torch.uint8).eq(0).all()
        assert not (leaked.get() == 7.25).any()
