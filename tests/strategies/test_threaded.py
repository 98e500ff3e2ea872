"""Workers in threads (``FederatedStrategy(parallel_workers=N)``): the oracle is the fused sequential path at one torch
thread (each thread's arithmetic), same seed: equal bit for bit."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Timer
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_fed import FederatedStrategy
from lightning_fed.backends.fused import FusedBackend
from lightning_fed.backends.threaded import ThreadedBackend
from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.strategies import glue
from lightning_fed.strategies.options import check_process_options
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers.base import current_worker
from tests.strategies.helpers import FedDM, max_abs_diff, tiny_dataset, trainer


def _model(optimizer: str = "sgd", cls: type = BoringClassifier, **kw: Any) -> BoringClassifier:
    torch.manual_seed(0)
    return cls(4, 3, hidden=8, lr=0.05, optimizer=optimizer, **kw)


def _fit(parallel_workers: int, *, optimizer: str = "sgd", rounds: int = 3, partition: str = "iid", workers: int = 5,
         trainer_kw: dict | None = None, model: BoringClassifier | None = None, batch_size: int = 5, n: int = 70,
         **strategy_kw: Any):  # fmt: skip
    model = model if model is not None else _model(optimizer)
    data = FedDM(tiny_dataset(n), num_workers=workers, batch_size=batch_size, seed=3, partition=partition)
    strategy_kw.setdefault("num_threads", 1)
    strategy = FederatedStrategy(parallel_workers=parallel_workers, **strategy_kw)
    fit = trainer(max_epochs=rounds, strategy=strategy, **(trainer_kw or {}))
    fit.fit(model, datamodule=data)
    return model, fit


# -- the oracle: threads == one worker after another -----------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])  # optimizer states kept per worker across rounds
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])  # unequal shards: a group's workers end apart
@pytest.mark.parametrize("parallel_workers", [2, 3])  # 5 workers: the last group is smaller
def test_threads_equal_one_worker_after_another(optimizer, partition, parallel_workers):
    one, one_fit = _fit(1, optimizer=optimizer, partition=partition, clients_per_round=4)
    many, many_fit = _fit(parallel_workers, optimizer=optimizer, partition=partition, clients_per_round=4)
    assert type(one_fit.strategy.backend) is FusedBackend
    assert type(many_fit.strategy.backend) is ThreadedBackend
    assert max_abs_diff(one, many) == 0.0  # the same operations, each worker on one thread, the same sum order
    assert max_abs_diff(_model(optimizer), many) > 1e-3  # it trained
    assert one_fit.strategy.worker_summary() == many_fit.strategy.worker_summary()
    states = one_fit.strategy.rounds.optimizer_states, many_fit.strategy.rounds.optimizer_states
    assert sorted(states[0].worker_ids()) == sorted(states[1].worker_ids())
    params = [list(one.parameters()), list(many.parameters())]
    for worker_id in states[0].worker_ids():  # each worker's momentum / Adam moments, keyed by the module's params
        mine, theirs = states[0].get(worker_id)[0], states[1].get(worker_id)[0]
        assert [sorted(mine.get(p, {})) for p in params[0]] == [sorted(theirs.get(p, {})) for p in params[1]]
        for p, q in zip(*params):
            for key, value in mine.get(p, {}).items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs[q][key])), (worker_id, key)
    assert many_fit.global_step == 3 * -(-4 // parallel_workers)  # one Lightning step per group of workers a round


def test_the_logged_values_and_per_worker_losses_are_the_sequential_paths():
    _, one = _fit(1, rounds=2, batch_size=4)  # shards of 14: batches of 4, 4, 4 and 2, weighted by size
    _, many = _fit(2, rounds=2, batch_size=4)
    keys = [k for k in one.callback_metrics if k.startswith("train_loss")] + ["val_loss", "val_acc"]
    assert sorted(one.callback_metrics) == sorted(many.callback_metrics) and len(keys) > 5
    for key in keys:  # val_acc: a torchmetrics metric the replicas share with the module, updated in validation
        assert torch.equal(one.callback_metrics[key], many.callback_metrics[key]), key


class ConvNet(BoringClassifier):
    """A CNN with BatchNorm: buffers trained at each worker (what vectorized workers refuse)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net = nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 4, 2, padding=1), nn.BatchNorm2d(4),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    "strategy_kw",
    [
        {"aggregation": "fedadam"},
        {"secure_aggregation": SecureAggregationConfig(seed=0)},  # masked at each worker, in plan order
        {"aggregation": "fedmedian"},  # keeps every update: no reused buffers
    ],
    ids=["fedadam", "secure_aggregation", "fedmedian"],
)
def test_threads_equal_sequential_for_a_cnn_with_batchnorm_and_server_side_aggregators(strategy_kw):
    one, _ = _fit(1, model=_model("momentum", ConvNet), rounds=2, **strategy_kw)
    many, _ = _fit(2, model=_model("momentum", ConvNet), rounds=2, **strategy_kw)
    assert max_abs_diff(one, many) == 0.0
    assert max_abs_diff(_model("momentum", ConvNet).net[2], many.net[2]) > 1e-3  # BatchNorm's statistics moved


class CountsInAnAttribute(BoringClassifier):
    """Keeps a tensor in a plain attribute across its steps: the sequential path restores such attributes at each
    worker's start, so the count a worker reaches is its own steps, never another worker's."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        previous = getattr(self, "count", None)
        self.count = torch.tensor(1.0) if previous is None else previous + 1
        self.log("count", self.count, reduce_fx="max", on_epoch=True)
        return super().training_step(batch, batch_idx)


def test_plain_tensor_attributes_start_afresh_for_every_worker_as_in_the_sequential_path():
    _, one = _fit(1, model=_model(cls=CountsInAnAttribute), rounds=2, partition="quantity_skew")
    _, many = _fit(2, model=_model(cls=CountsInAnAttribute), rounds=2, partition="quantity_skew")
    most = max(row["steps"] for row in one.strategy.worker_summary().values()) / 2  # a worker's steps in a round
    assert float(many.callback_metrics["count"]) == float(one.callback_metrics["count"]) == most


def test_gradient_clipping_and_workers_of_more_than_32_batches():
    def fit(parallel_workers: int, clip: float | None):
        model = _model("momentum")
        data = FedDM(tiny_dataset(140), num_workers=2, batch_size=2, seed=3)  # 35 batches a worker
        fit = trainer(max_epochs=2, gradient_clip_val=clip,
                      strategy=FederatedStrategy(parallel_workers=parallel_workers, num_threads=1))  # fmt: skip
        fit.fit(model, datamodule=data)
        return model, fit

    one, _ = fit(1, 0.01)
    many, many_fit = fit(2, 0.01)
    unclipped, _ = fit(2, None)
    assert max_abs_diff(one, many) == 0.0 and max_abs_diff(many, unclipped) > 1e-4  # clipping applied
    assert many_fit.global_step == 2 * 2  # 2 rounds x (32 + 3 batches of both workers at once)


def test_resume_from_a_rounds_end_equals_the_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    whole, _ = _fit(2, rounds=4, optimizer="adam", clients_per_round=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1)
    _fit(2, rounds=2, optimizer="adam", clients_per_round=3,
         trainer_kw={"enable_checkpointing": True, "callbacks": [ckpt]})  # fmt: skip
    model = _model("adam")
    data = FedDM(tiny_dataset(70), num_workers=5, batch_size=5, seed=3)
    resumed = trainer(max_epochs=4, strategy=FederatedStrategy(parallel_workers=2, num_threads=1, clients_per_round=3))
    resumed.fit(model, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert max_abs_diff(whole, model) == 0.0


# -- the threads really run at once, each in its worker's session ----------------------------------------------------
class Meeting(BoringClassifier):
    """Each training step waits until another worker's thread reaches the same point: only workers that train at
    the same time get past it (one after another, the barrier breaks)."""

    barrier = threading.Barrier(2)
    timeout = 10.0
    seen: list[tuple[Any, str]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.barrier.wait(timeout=self.timeout)
        self.seen.append((current_worker().id, threading.current_thread().name))
        x, y = batch
        return F.cross_entropy(self(x), y)


def test_two_workers_train_at_the_same_time_each_in_its_own_session_and_thread():
    Meeting.seen, Meeting.timeout = [], 10.0
    Meeting.barrier.reset()
    _fit(2, model=_model(cls=Meeting), rounds=1, workers=2, n=40, num_threads=2)  # equal shards: 4 steps each
    assert len(Meeting.seen) == 8
    assert {worker for worker, _ in Meeting.seen} == {"w0", "w1"}
    assert all(name.startswith("lightning_fed-worker") for _, name in Meeting.seen)
    threads_of = {w: {name for worker, name in Meeting.seen if worker == w} for w in ("w0", "w1")}
    assert threads_of["w0"].isdisjoint(threads_of["w1"])
    Meeting.barrier.reset()
    Meeting.timeout = 0.5
    with pytest.raises(WorkerError, match=r"w0.*BrokenBarrierError"):  # the oracle: one after another never meets
        _fit(1, model=_model(cls=Meeting), rounds=1, workers=2, n=40, num_threads=2)
    Meeting.barrier.reset()
    with pytest.raises(WorkerError, match=r"w0.*BrokenBarrierError"):  # a budget of one torch thread: one at a time
        _fit(2, model=_model(cls=Meeting), rounds=1, workers=2, n=40, num_threads=1)


def test_torch_thread_counts_are_left_as_they_were():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever the test run's count: the worker threads' 1 must not leak
    try:
        _fit(2, rounds=1, num_threads=None)  # no governor: only the worker threads run at one torch thread
        seen = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # started after the fit
        later.start()
        later.join()
        assert torch.get_num_threads() == 2 and seen == [2]
    finally:
        torch.set_num_threads(before)


class ReplicasAtRoundEnd(Callback):
    """At each round's end: whether every thread's copy holds the new global model and no optimizer state."""

    def __init__(self) -> None:
        self.clean: list[bool] = []

    def on_train_epoch_end(self, trainer, pl_module):
        module = [t.detach() for t in [*pl_module.parameters(), *pl_module.buffers()]]
        for replica in trainer.strategy.backend.replicas:
            same = all(torch.equal(a, b) for a, b in zip(replica.tensors, module))
            no_grads = all(p.grad is None for p in replica.params)
            self.clean.append(same and no_grads and not replica.optimizer.state)


def test_no_workers_local_model_stays_in_a_thread_copy_past_its_round():
    """An attacker on the server reading the copies after a round (under secure aggregation the server must never see
    a worker's unmasked local model) finds the global model, and no worker's gradients or momentum."""
    seen = ReplicasAtRoundEnd()
    _fit(2, optimizer="momentum", rounds=2, trainer_kw={"callbacks": [seen]},
         secure_aggregation=SecureAggregationConfig(seed=0))  # fmt: skip
    assert seen.clean == [True, True, True, True]  # 2 rounds x 2 copies


# -- failures -----------------------------------------------------------------------------------------------------------
class FailsAtW1(BoringClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if current_worker().id == "w1" and batch_idx == 1:
            raise ValueError("w1's disk is full")
        return super().training_step(batch, batch_idx)


def test_a_failing_worker_sits_the_round_out_as_in_the_sequential_path():
    one, one_fit = _fit(1, model=_model(cls=FailsAtW1), rounds=2, tolerate_failures=True)
    many, many_fit = _fit(2, model=_model(cls=FailsAtW1), rounds=2, tolerate_failures=True)
    assert max_abs_diff(one, many) == 0.0
    summary = many_fit.strategy.worker_summary()
    assert summary == one_fit.strategy.worker_summary() and summary["w1"]["failed"] == 2
    with pytest.raises(WorkerError, match=r"worker 'w1' failed to run plan 'training_step': ValueError: w1's disk"):
        _fit(2, model=_model(cls=FailsAtW1), rounds=1)


class TrainMetric(BoringClassifier):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.train_acc(logits, y)
        return F.cross_entropy(logits, y)


@pytest.mark.parametrize("tolerate_failures", [False, True])  # a configuration error is never a worker's failure
def test_a_metric_updated_in_training_step_is_refused_before_it_changes(tolerate_failures):
    model = _model(cls=TrainMetric)
    wrapped = vars(model.train_acc)["update"]  # torchmetrics wraps update per instance
    with pytest.raises(WorkerError, match=r"training_step updates torchmetrics metric 'train_acc'.*parallel_workers=1"):
        _fit(2, model=model, rounds=1, tolerate_failures=tolerate_failures)
    assert isinstance(model.train_acc.tp, torch.Tensor) and int(model.train_acc.tp.sum()) == 0
    assert vars(model.train_acc)["update"] is wrapped  # the guard is gone


class StopsAfterOneStep(Timer):
    """What a Timer does when its time is up (it may stop a fit between a round's steps), after the first step."""

    def on_train_batch_end(self, trainer, *args: Any) -> None:
        trainer.should_stop = True


def test_a_fit_stopped_in_the_middle_of_a_round_delivers_the_groups_workers():
    initial = _model()
    stop = StopsAfterOneStep(duration=timedelta(days=1))  # 35 batches a worker: 32 in the round's first step
    model, fit = _fit(2, rounds=3, workers=2, n=140, batch_size=2, trainer_kw={"callbacks": [stop]})
    assert fit.global_step == 1 and fit.strategy.round_index == 1  # the group's first step, then the round closed
    assert max_abs_diff(initial, model) > 1e-4  # with both workers' updates after 32 steps
    assert {w: row["steps"] for w, row in fit.strategy.worker_summary().items()} == {"w0": 32, "w1": 32}


# -- what threads refuse, naming it -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, True, 2.0, "2", None])
def test_a_bad_parallel_workers_is_refused(value):
    with pytest.raises(FederatedConfigError, match=rf"`parallel_workers={value!r}` is not valid: pass an integer >= 1"):
        FederatedStrategy(parallel_workers=value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vectorize": True}, r"`parallel_workers=2` and `vectorize=True` are two ways.*pass vectorize=False"),
        ({"vectorize": "auto"}, r"`parallel_workers=2` and `vectorize='auto'`"),
        ({"mode": "follow"}, r"`parallel_workers=2` .*needs mode='fedavg', got mode='follow'"),
        ({"local_loop": "steps"}, r"`parallel_workers=2` .*`local_loop='steps'`.*pass local_loop='auto'"),
    ],
)
def test_parallel_workers_with_what_contradicts_it_is_refused(kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedStrategy(parallel_workers=2, **kwargs)


class AfterBackward(Callback):
    def on_after_backward(self, trainer, pl_module):
        pass


class OwnBackward(BoringClassifier):
    def backward(self, loss, *args, **kwargs):
        loss.backward()


BLOCKED = {
    "callback_hook": ({"trainer_kw": {"callbacks": [AfterBackward()]}}, "AfterBackward.on_after_backward"),
    "module_hook": ({"model": OwnBackward(4, 3)}, "OwnBackward.backward"),
    "precision": ({"trainer_kw": {"precision": "64-true"}}, "precision='64-true'"),
    "fedprox": ({"aggregation": "fedprox"}, "FedProx, which edits gradients at the workers"),
    "scaffold": ({"aggregation": "scaffold"}, "SCAFFOLD, which edits gradients at the workers"),
    "max_steps": ({"trainer_kw": {"max_steps": 7}}, "max_steps=7"),  # what stops fused local loops stops threads
    "dropouts": ({"dropout_rate": 0.3, "seed": 1}, "simulated failures"),
    "deterministic_dropout": ({"model": BoringClassifier(4, 3, dropout=0.5)},  # the test trainer is deterministic
                              r"deterministic=True\) with dropout modules \['net.0'\]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_what_threads_cannot_run_is_refused_at_setup_naming_it(case):
    kwargs, reason = BLOCKED[case]
    with pytest.raises(FederatedConfigError, match=rf"`parallel_workers=2` trains 2 workers at once.*{reason}.*Pass "
                                                   "parallel_workers=1"):  # fmt: skip
        _fit(2, rounds=1, **kwargs)


def test_processes_and_remote_sites_refuse_threads():
    with pytest.raises(FederatedConfigError, match=r"parallel_workers=2\) trains .* got 2 processes: pass parallel_"):
        check_process_options("fedavg", False, "2 processes", parallel_workers=2)
    with pytest.raises(FederatedConfigError, match=r"parallel_workers=2, .*parallel_workers=1 \(each site trains"):
        glue.remote_backend(FederatedStrategy(parallel_workers=2), None)  # type: ignore[arg-type]
