"""Vectorized workers (``FederatedStrategy(vectorize=True)``): the oracle is the sequential path, same seed."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fed import FederatedStrategy
from lightning_fed.aggregation import FedAvg, FedAvgM, FedProx
from lightning_fed.backends.vectorized import VectorStep, plan_cohorts
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.rounds.worker_state import WorkerOptimizerStates
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, max_abs_diff, tiny_dataset, trainer


def _model(optimizer: str = "sgd", seed: int = 0, **kw: Any) -> BoringClassifier:
    torch.manual_seed(seed)
    return BoringClassifier(4, 3, hidden=8, lr=0.05, optimizer=optimizer, **kw)


def _fit(vectorize: bool, *, optimizer: str = "sgd", rounds: int = 3, partition: str = "iid", n: int = 60,
         workers: int = 4, batch_size: int = 5, model: BoringClassifier | None = None, prefix: str = "w",
         trainer_kw: dict | None = None, **strategy_kw: Any) -> tuple[BoringClassifier, Any]:  # fmt: skip
    model = model if model is not None else _model(optimizer)
    data = FedDM(tiny_dataset(n), num_workers=workers, batch_size=batch_size, seed=3, partition=partition,
                 prefix=prefix)  # fmt: skip
    strategy = FederatedStrategy(vectorize=vectorize, **strategy_kw)
    fit = trainer(max_epochs=rounds, strategy=strategy, **(trainer_kw or {}))
    fit.fit(model, datamodule=data)
    return model, fit


# -- the oracle: vectorized FedAvg == sequential FedAvg -------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_vectorized_fedavg_equals_sequential(optimizer, partition):
    start = _model(optimizer)
    seq, seq_trainer = _fit(False, optimizer=optimizer, partition=partition, model=_model(optimizer),
                            local_loop="steps")  # fmt: skip
    vec, vec_trainer = _fit(True, optimizer=optimizer, partition=partition, model=_model(optimizer))

    assert max_abs_diff(seq, vec) < 1e-5
    assert max_abs_diff(start, vec) > 1e-3  # it trained
    assert vec_trainer.strategy.round_index == seq_trainer.strategy.round_index == 3
    assert vec_trainer.global_step < seq_trainer.global_step  # one Lightning step per vectorized step
    steps = {w: s["steps"] for w, s in seq_trainer.strategy.worker_summary().items()}
    assert {w: s["steps"] for w, s in vec_trainer.strategy.worker_summary().items()} == steps


@pytest.mark.parametrize("local_loop", ["auto", "steps"])  # fused chunks of vectorized steps / one Lightning step each
def test_vectorized_logs_each_workers_loss_and_last_loss_as_sequential(local_loop):
    """Shards of unequal size (quantity skew, batches of 4: a last smaller batch, workers masked at the end)."""
    _, seq = _fit(False, partition="quantity_skew", batch_size=4, local_loop="steps", rounds=2)
    _, vec = _fit(True, partition="quantity_skew", batch_size=4, local_loop=local_loop, rounds=2)
    keys = [k for k in seq.callback_metrics if k.startswith("train_loss/")]
    assert len(keys) == 4
    for key in keys:  # the mean of the last round's losses, weighted by batch size
        assert float(vec.callback_metrics[key]) == pytest.approx(float(seq.callback_metrics[key]), abs=1e-5), key
    seq_last = {w: float(s["last_loss"]) for w, s in seq.strategy.worker_summary().items()}
    vec_last = {w: float(s["last_loss"]) for w, s in vec.strategy.worker_summary().items()}
    assert vec_last == pytest.approx(seq_last, abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 32])
def test_chunks_of_steps_gathered_at_once_equal_sequential(monkeypatch, chunk):
    # each worker's batches are gathered once per chunk of steps: chunk boundaries inside a cohort whose workers
    # have different numbers of steps (quantity skew) must not change a number
    from lightning_fed.backends.vectorized import cohorts
    from lightning_fed.data.loader import FederatedDataLoader

    monkeypatch.setattr(cohorts, "CHUNK_STEPS", chunk)
    kw = dict(optimizer="momentum", partition="quantity_skew", rounds=2, n=90)
    seq, _ = _fit(False, local_loop="steps", **kw)
    visits = []
    gather_batches = FederatedDataLoader.gather_batches

    def counted(self, shard, positions):
        visits.append(len(positions))
        return gather_batches(self, shard, positions)

    monkeypatch.setattr(FederatedDataLoader, "gather_batches", counted)
    vec, vec_trainer = _fit(True, **kw)
    assert max_abs_diff(seq, vec) < 1e-5
    steps = sum(s["steps"] for s in vec_trainer.strategy.worker_summary().values())
    assert sum(visits) == steps  # every batch gathered exactly once, a worker's chunk in one visit
    assert max(visits) <= chunk and (chunk == 1 or len(visits) < steps)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fused_chunks_of_vectorized_steps_equal_one_lightning_step_each(optimizer):
    # local_loop="auto" (the default) runs up to CHUNK_STEPS vectorized steps in one Lightning step where nothing
    # observes single batches: the numbers are those of one Lightning step per vectorized step, bit for bit
    from lightning_fed.backends.vectorized.cohorts import CHUNK_STEPS

    kw = dict(optimizer=optimizer, partition="quantity_skew", n=400, rounds=2)  # a 310-sample worker: 62 steps
    seq, _ = _fit(False, local_loop="steps", **kw)
    per_step, per_step_fit = _fit(True, local_loop="steps", **kw)
    fused, fused_fit = _fit(True, **kw)
    backend = fused_fit.strategy.backend
    assert backend.fused and not per_step_fit.strategy.backend.fused
    assert "(fused)" in fused_fit.strategy.summary()
    assert max_abs_diff(per_step, fused) == 0.0
    assert max_abs_diff(seq, fused) < 1e-5
    if optimizer == "sgd":  # no optimizer state: one cohort a round (Adam's cohorts follow its per-worker state)
        lengths = [c.length for r in (0, 1) for c in backend.cohorts(fused_fit.strategy.round_plan(r))]
        assert max(lengths) > CHUNK_STEPS  # a cohort crosses a chunk boundary
        assert per_step_fit.global_step == sum(lengths)
        assert fused_fit.global_step == sum(-(-n // CHUNK_STEPS) for n in lengths)
    assert 0 < fused_fit.global_step < per_step_fit.global_step
    steps = {w: s["steps"] for w, s in per_step_fit.strategy.worker_summary().items()}
    assert {w: s["steps"] for w, s in fused_fit.strategy.worker_summary().items()} == steps


def test_a_callback_that_watches_batches_keeps_one_lightning_step_per_vectorized_step():
    from lightning.pytorch import Callback

    class Watches(Callback):
        def on_train_batch_end(self, *args, **kwargs):
            pass

    _, fit = _fit(True, trainer_kw={"callbacks": [Watches()]})
    assert not fit.strategy.backend.fused
    with pytest.raises(FederatedConfigError, match=r"local_loop='fused'.*Watches\.on_train_batch_end"):
        _fit(True, local_loop="fused", trainer_kw={"callbacks": [Watches()]})


def test_unequal_shards_with_adam_state_kept_across_rounds_train_in_cohorts():
    # shards of different lengths leave Adam's scalar `step` different per worker after round 1: the workers
    # cannot share one stacked optimizer, so they form cohorts of equal step count (still == sequential)
    seq, _ = _fit(False, optimizer="adam", partition="quantity_skew", rounds=3)
    vec, vec_trainer = _fit(True, optimizer="adam", partition="quantity_skew", rounds=3)
    strategy = vec_trainer.strategy
    assert len(strategy.backend.cohorts(strategy.round_plan(3))) > 1
    assert max_abs_diff(seq, vec) < 1e-5
    states = strategy.rounds.optimizer_states
    for worker_id, summary in strategy.worker_summary().items():
        (state,) = states.get(worker_id)
        assert all(float(entries["step"]) == summary["steps"] for entries in state.values())


def test_client_sampling_local_steps_and_reset_state_match_sequential():
    kw = dict(optimizer="momentum", partition="quantity_skew", workers=5, clients_per_round=2, local_steps=4,
              reset_optimizer_state=True)  # fmt: skip
    seq, _ = _fit(False, **kw)
    vec, _ = _fit(True, **kw)
    assert max_abs_diff(seq, vec) < 1e-5


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_is_per_worker_as_sequential(algorithm):
    kw = dict(optimizer="sgd", trainer_kw=dict(gradient_clip_val=0.05, gradient_clip_algorithm=algorithm))
    seq, _ = _fit(False, **kw)
    vec, _ = _fit(True, **kw)
    unclipped, _ = _fit(True, optimizer="sgd")
    assert max_abs_diff(seq, vec) < 1e-5
    assert max_abs_diff(unclipped, vec) > 1e-4  # clipping changed something


def test_dropout_of_workers_and_deadlines_match_sequential():
    kw = dict(optimizer="momentum", partition="quantity_skew", workers=5, dropout_rate=0.3, deadline_steps=2,
              straggler_policy="partial")  # fmt: skip
    seq, seq_trainer = _fit(False, **kw)
    vec, vec_trainer = _fit(True, **kw)
    assert max_abs_diff(seq, vec) < 1e-5

    def counters(trainer):
        return {
            w: {k: v for k, v in s.items() if k != "last_loss"} for w, s in trainer.strategy.worker_summary().items()
        }

    assert counters(vec_trainer) == counters(seq_trainer)
    assert sum(s["dropped"] + s["late"] for s in counters(vec_trainer).values()) > 0  # the simulation did something


@pytest.mark.parametrize("aggregation", [FedAvgM, "secure"])
def test_other_sum_aggregators_match_sequential(aggregation):
    def kw() -> dict[str, Any]:
        return dict(secure_aggregation=True) if aggregation == "secure" else dict(aggregation=aggregation(momentum=0.9))

    seq, _ = _fit(False, prefix="s", **kw())
    vec, _ = _fit(True, prefix="v", **kw())
    assert max_abs_diff(seq, vec) < 1e-5


# -- randomness, logging, fallback ----------------------------------------------------------------------------------
class _Recorder(FedAvg):
    """FedAvg that keeps each worker's update of the last round."""

    def begin_round(self, global_tensors):
        super().begin_round(global_tensors)
        self.updates: dict = {}

    def accumulate(self, update, weight, worker_id):
        self.updates[worker_id] = [u.clone() for u in update]
        super().accumulate(update, weight, worker_id)


def test_dropout_masks_differ_between_workers():
    # every sample is the same, so without dropout all workers' updates are equal; with dropout they differ
    data = torch.utils.data.TensorDataset(torch.randn(1, 4).repeat(32, 1), torch.zeros(32, dtype=torch.long))
    results = {}
    for p in (0.0, 0.5):
        agg = _Recorder()
        model = _model("sgd", dropout=p)
        fed = FedDM(data, num_workers=4, batch_size=8)
        trainer(max_epochs=1, strategy=FederatedStrategy(vectorize=True, aggregation=agg)).fit(model, datamodule=fed)
        updates = list(agg.updates.values())
        results[p] = max(max_abs_diff_tensors(updates[0], u) for u in updates[1:])
    assert results[0.0] < 1e-7
    assert results[0.5] > 1e-4


def max_abs_diff_tensors(a, b) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


class _LogsPerWorker(BoringClassifier):
    """Logs values that tell the workers apart (its batch's first feature), with Lightning's epoch reductions."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("x_mean", x[:, 0].mean(), on_step=False, on_epoch=True)
        self.log("x_max", x[:, 0].max(), on_epoch=True, reduce_fx="max")
        self.log("x_sum", x[:, 0].sum(), on_epoch=True, reduce_fx=torch.sum)
        self.log_dict({"loss_again": loss}, on_step=True, on_epoch=True)
        return {"loss": loss}


def test_self_log_gives_per_worker_values_like_sequential():
    # worker k's samples all have first feature k, so any mixing would change the epoch mean of x_mean
    x = torch.randn(40, 4)
    shards = torch.arange(40) // 10
    x[:, 0] = shards.float()
    data = torch.utils.data.TensorDataset(x, torch.arange(40) % 3)
    metrics = []
    for vectorize in (False, True):
        torch.manual_seed(0)
        model = _LogsPerWorker(4, 3, hidden=8, lr=0.05)
        fed = FedDM(data, num_workers=4, batch_size=3, partition="shards", shards_per_worker=1, seed=0)
        trainer(max_epochs=1, strategy=FederatedStrategy(vectorize=vectorize)).fit(model, datamodule=fed)
        metrics.append({k: float(v) for k, v in model.trainer.callback_metrics.items()})
    assert metrics[0]["x_mean"] == pytest.approx(1.5)
    assert metrics[0]["x_max"] == 3 and metrics[0]["x_sum"] == pytest.approx(60.0)
    for key in ("x_mean", "x_max", "x_sum", "loss_again_epoch"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-6)


class _UsesItem(BoringClassifier):
    """``.item()`` in training_step: vmap cannot batch it."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        scale = 1.0 if x.abs().max().item() < 1e6 else 0.0
        return F.cross_entropy(self(x), y) * scale


def test_unbatchable_training_step_falls_back_to_loop_mode_with_one_warning():
    torch.manual_seed(0)
    seq, _ = _fit(False, model=_UsesItem(4, 3, hidden=8, lr=0.05))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"cannot run under torch\.vmap .*item.*loop mode") as record:
        vec, vec_trainer = _fit(True, model=_UsesItem(4, 3, hidden=8, lr=0.05))
    assert sum("cannot run under torch.vmap" in str(w.message) for w in record) == 1
    assert vec_trainer.strategy.backend.vector.use_vmap is False
    assert max_abs_diff(seq, vec) < 1e-5


def test_a_non_vmap_error_in_training_step_is_raised_not_swallowed():
    class Broken(BoringClassifier):
        def training_step(self, batch, batch_idx):
            raise KeyError("my bug")

    with pytest.raises(KeyError, match="my bug"):
        _fit(True, model=Broken(4, 3))


class _Tied(BoringClassifier):
    """An autoencoder-like tie: the output layer reuses a square hidden layer's weight (one parameter, two names)."""

    def __init__(self) -> None:
        super().__init__(4, 4, hidden=4, lr=0.05)
        self.net[2].weight = self.net[0].weight


def test_tied_weights_train_as_one_parameter_like_sequential():
    torch.manual_seed(0)
    seq, _ = _fit(False, model=_Tied(), local_loop="steps")
    torch.manual_seed(0)
    start = _Tied()
    torch.manual_seed(0)
    vec, _ = _fit(True, model=_Tied())
    assert vec.net[2].weight is vec.net[0].weight
    assert max_abs_diff(seq, vec) < 1e-5
    assert max_abs_diff(start, vec) > 1e-3


def test_a_loss_that_is_not_one_number_is_refused_naming_its_shape():
    class TwoLosses(BoringClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.stack([F.cross_entropy(self(x), y)] * 2)

    with pytest.raises(FederatedConfigError, match=r"loss of shape \(2,\) per worker; return a scalar loss"):
        _fit(True, model=TwoLosses(4, 3))


# -- checkpoint / resume -------------------------------------------------------------------------------------------
def test_resume_from_round_checkpoint_equals_uninterrupted_vectorized_run(tmp_path):
    kw = dict(optimizer="adam", partition="quantity_skew", clients_per_round=3)
    full, _ = _fit(True, rounds=4, **kw)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    _fit(True, rounds=2, trainer_kw=dict(enable_checkpointing=True, callbacks=[ckpt]), **kw)
    model = _model("adam", seed=99)  # different init: everything must come from the checkpoint
    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, seed=3, partition="quantity_skew", prefix="w")
    resumed = trainer(max_epochs=4, strategy=FederatedStrategy(vectorize=True, clients_per_round=3))
    resumed.fit(model, datamodule=data, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert max_abs_diff(full, model) < 1e-6


# -- what it refuses, naming the cause -------------------------------------------------------------------------------
def test_batchnorm_is_refused_naming_the_module():
    with pytest.raises(FederatedConfigError, match=r"BatchNorm1d module 'net\.1'.*vectorize=False"):
        _fit(True, model=BoringClassifier(4, 3, hidden=8, batch_norm=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mode="follow"), r"vectorize=True.*needs mode='fedavg'"),
        (dict(tolerate_failures=True), r"tolerate_failures=True"),
        (dict(vectorize="yes"), r"`vectorize='yes'` is not valid: pass True or False"),
    ],
)
def test_bad_combinations_are_refused_at_construction(kwargs, match):
    kwargs = {"vectorize": True, **kwargs}
    with pytest.raises(FederatedConfigError, match=match):
        FederatedStrategy(**kwargs)


def test_aggregators_that_edit_gradients_are_refused():
    with pytest.raises(FederatedConfigError, match=r"does not support FedProx, which edits gradients"):
        _fit(True, aggregation=FedProx(mu=0.1))


def test_gradient_accumulation_and_step_schedulers_are_refused():
    with pytest.raises(FederatedConfigError, match=r"accumulate_grad_batches=2"):
        _fit(True, trainer_kw=dict(accumulate_grad_batches=2))

    class StepSchedule(BoringClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                       "interval": "step"}}  # fmt: skip

    with pytest.raises(FederatedConfigError, match=r"step-interval schedulers \['StepLR'\]"):
        _fit(True, model=StepSchedule(4, 3))


def test_overridden_backward_hooks_are_refused():
    class Hooked(BoringClassifier):
        def on_after_backward(self):
            pass

    with pytest.raises(FederatedConfigError, match=r"\['on_after_backward'\] would not be called"):
        _fit(True, model=Hooked(4, 3))


def test_epoch_schedulers_are_followed():
    class EpochSchedule(BoringClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)]

    torch.manual_seed(0)
    seq, _ = _fit(False, model=EpochSchedule(4, 3, hidden=8))
    torch.manual_seed(0)
    vec, _ = _fit(True, model=EpochSchedule(4, 3, hidden=8))
    assert max_abs_diff(seq, vec) < 1e-5


# -- the pieces -----------------------------------------------------------------------------------------------------
def test_plan_cohorts_groups_workers_by_optimizer_state_signature():
    class W:
        def __init__(self, i):
            self.id = i

    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p])
    states = WorkerOptimizerStates()
    from collections import defaultdict

    def adam_state(step):
        s = defaultdict(dict)
        s[p] = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
        return [s]

    states.put("a", adam_state(3))
    states.put("b", adam_state(5))
    states.put("c", adam_state(3))
    workers = [W(i) for i in "abcd"]
    cohorts = plan_cohorts(workers, [2, 3, 4, 5], states, opt)
    assert [[w.id for w in c.workers] for c in cohorts] == [["a", "c"], ["b"], ["d"]]
    assert [c.steps for c in cohorts] == [(2, 4), (3,), (5,)]
    assert [c.length for c in cohorts] == [4, 3, 5]
    assert "batches=1/2" in repr(VectorStep(cohorts[0], 0, [object(), None]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vectorized_equals_sequential_on_gpu():
    seen: set[str] = set()

    class DeviceSeen(pl.Callback):  # the module's device while it trains (Lightning moves it home after fit)
        def on_train_epoch_end(self, trainer, pl_module):
            seen.add(pl_module.device.type)

    kw = dict(optimizer="adam", partition="quantity_skew")
    seq, _ = _fit(False, trainer_kw=dict(accelerator="gpu", devices=1, callbacks=[DeviceSeen()]), **kw)
    vec, _ = _fit(True, trainer_kw=dict(accelerator="gpu", devices=1, callbacks=[DeviceSeen()]), **kw)
    assert seen == {"cuda"}
    assert max_abs_diff(seq, vec) < 1e-5
