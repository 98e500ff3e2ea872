"""Fused local loops (``FederatedStrategy(local_loop=...)``): the oracle is the per-batch path, same seed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from lightning_fed import FederatedStrategy
from lightning_fed.backends.fused import FusedBackend
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, max_abs_diff, tiny_dataset, trainer


def _model(optimizer: str = "sgd", **kw: Any) -> BoringClassifier:
    torch.manual_seed(0)
    return BoringClassifier(4, 3, hidden=8, lr=0.05, optimizer=optimizer, **kw)


def _fit(local_loop: str, *, optimizer: str = "sgd", rounds: int = 3, partition: str = "iid", workers: int = 4,
         trainer_kw: dict | None = None, model: BoringClassifier | None = None, batch_size: int = 5,
         **strategy_kw: Any):  # fmt: skip
    model = model if model is not None else _model(optimizer)
    data = FedDM(tiny_dataset(60), num_workers=workers, batch_size=batch_size, seed=3, partition=partition)
    fit = trainer(max_epochs=rounds, strategy=FederatedStrategy(local_loop=local_loop, **strategy_kw),
                  **(trainer_kw or {}))  # fmt: skip
    fit.fit(model, datamodule=data)
    return model, fit


# -- the oracle: fused == one Lightning step per batch ----------------------------------------------------------------
class AfterBackward(Callback):
    def on_after_backward(self, trainer, pl_module):
        pass


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
@pytest.mark.parametrize("path", ["direct", "lightning"])  # without per-step hooks / through Lightning's
def test_fused_local_loops_equal_one_lightning_step_per_batch(optimizer, partition, path):
    kw = {"trainer_kw": {"callbacks": [AfterBackward()]}} if path == "lightning" else {}
    steps, steps_trainer = _fit("steps", optimizer=optimizer, partition=partition, clients_per_round=3)
    fused, fused_trainer = _fit("fused", optimizer=optimizer, partition=partition, clients_per_round=3, **kw)
    assert type(steps_trainer.strategy.backend) is SequentialBackend
    assert type(fused_trainer.strategy.backend) is FusedBackend
    assert fused_trainer.strategy.backend._direct() is (path == "direct")
    assert max_abs_diff(steps, fused) == 0.0  # the same operations in the same order
    assert max_abs_diff(_model(optimizer), fused) > 1e-3  # it trained
    assert steps_trainer.strategy.worker_summary() == fused_trainer.strategy.worker_summary()
    assert fused_trainer.global_step == 3 * 3  # one Lightning step per sampled worker per round
    assert steps_trainer.global_step == sum(steps_trainer.strategy.round_plan(r).total_steps for r in range(3))


@pytest.mark.parametrize(
    "strategy_kw",
    [
        {"aggregation": "fedprox"},  # a proximal term added to each worker's gradients (post_backward)
        {"aggregation": "scaffold"},  # control variates: worker-side state and gradient corrections
        {"aggregation": "fedadam"},
        {"secure_aggregation": SecureAggregationConfig(seed=0)},  # seeded: its stochastic rounding repeats
        {"tolerate_failures": True},
    ],
    ids=["fedprox", "scaffold", "fedadam", "secure_aggregation", "tolerate_failures"],
)
def test_fused_equals_steps_for_worker_side_aggregators(strategy_kw):
    steps, _ = _fit("steps", rounds=2, **strategy_kw)
    fused, _ = _fit("fused", rounds=2, **strategy_kw)
    assert max_abs_diff(steps, fused) == 0.0


def test_fused_logs_the_same_epoch_means_and_per_worker_losses():
    _, steps = _fit("steps", rounds=2, batch_size=4)  # shards of 15: batches of 4, 4, 4 and 3, weighted by size
    _, fused = _fit("fused", rounds=2, batch_size=4)
    for key in ("train_loss_epoch", "train_loss/w0", "train_loss/w3"):
        assert float(fused.callback_metrics[key]) == pytest.approx(float(steps.callback_metrics[key]), abs=1e-6), key


def test_fused_calls_backward_and_optimizer_hooks_once_per_local_batch_and_clips_gradients():
    calls: dict[str, int] = {"on_before_backward": 0, "on_after_backward": 0, "on_before_optimizer_step": 0}

    class Counter(Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            calls["on_before_backward"] += 1

        def on_after_backward(self, trainer, pl_module):
            calls["on_after_backward"] += 1

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            calls["on_before_optimizer_step"] += 1

    clip = {"gradient_clip_val": 0.01}
    fused, fit = _fit("fused", rounds=2, trainer_kw={**clip, "callbacks": [Counter()]})
    steps, _ = _fit("steps", rounds=2, trainer_kw=clip)
    unclipped, _ = _fit("fused", rounds=2)
    local = sum(row["steps"] for row in fit.strategy.worker_summary().values())
    assert local == 2 * 12 and calls == dict.fromkeys(calls, local)
    assert max_abs_diff(steps, fused) == 0.0 and max_abs_diff(fused, unclipped) > 1e-4  # clipping applied


def test_fused_progress_bar_counts_the_rounds_workers():
    totals = []

    class Totals(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            totals.append(trainer.progress_bar_callback.train_progress_bar.total)

    _fit("auto", rounds=2, clients_per_round=3, trainer_kw={"enable_progress_bar": True, "callbacks": [Totals()]})
    assert totals == [3, 3]


def test_fused_resume_from_a_rounds_end_equals_the_uninterrupted_run(tmp_path):
    whole, _ = _fit("fused", rounds=4, optimizer="adam", clients_per_round=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1)
    _fit("fused", rounds=2, optimizer="adam", clients_per_round=2,
         trainer_kw={"enable_checkpointing": True, "callbacks": [ckpt]})  # fmt: skip
    model = _model("adam")
    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, seed=3)
    resumed = trainer(max_epochs=4, strategy=FederatedStrategy(local_loop="fused", clients_per_round=2))
    resumed.fit(model, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert max_abs_diff(whole, model) < 1e-6


# -- auto: fused unless something needs single batches -------------------------------------------------------------
class BatchEndCallback(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass


class BatchStartModule(BoringClassifier):
    def on_train_batch_start(self, batch, batch_idx):
        pass


# -- sample-level DP-SGD: the same Poisson draws, noise and budget stop as one Lightning step per batch --------------
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["ghost", "hooks"])
@pytest.mark.parametrize("budget", [None, 6.0])  # 6.0: 4 steps at q = 1/3, in the middle of round 2
def test_sample_level_dp_sgd_in_fused_loops_equals_one_lightning_step_per_batch(mode, budget):
    pytest.importorskip("opacus")
    noise = {"noise_multiplier": 1.0} if budget is None else {"noise_multiplier": 1.0, "target_epsilon": budget}
    config = DPConfig(level="sample", max_grad_norm=0.5, seed=2, grad_sample_mode=mode, **noise)
    steps, steps_trainer = _fit("steps", privacy=config)
    fused, fused_trainer = _fit("auto", privacy=config)
    assert type(steps_trainer.strategy.backend) is SequentialBackend
    assert type(fused_trainer.strategy.backend) is FusedBackend  # sample-level DP no longer needs a step per batch
    assert max_abs_diff(steps, fused) == 0.0  # the same Poisson batches, clipping and noise, in the same order
    assert max_abs_diff(_model(), fused) > 1e-3
    dp_steps, dp_fused = steps_trainer.strategy.aggregator, fused_trainer.strategy.aggregator
    histories = {w: a.history for w, a in dp_fused.accountants.items()}
    assert histories == {w: a.history for w, a in dp_steps.accountants.items()}
    assert steps_trainer.strategy.worker_summary() == fused_trainer.strategy.worker_summary()
    taken = {w: sum(count for (_, _, count) in h) for w, h in histories.items()}
    if budget is None:
        assert taken == {f"w{i}": 3 * 3 for i in range(4)}  # 3 rounds of 3 batches (15 samples, batch 5)
    else:  # each budget ran out in the middle of round 2, at the same step in both paths
        assert taken == {f"w{i}": 4 for i in range(4)}
        assert all(dp_fused.epsilon(w) <= budget and not dp_fused.can_step(w) for w in dp_fused.accountants)


def _step_scheduler_model() -> BoringClassifier:
    class StepScheduled(BoringClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2),
                                                       "interval": "step"}}  # fmt: skip

    torch.manual_seed(0)
    return StepScheduled(4, 3)


BLOCKED = {
    "callback": ({"trainer_kw": {"callbacks": [BatchEndCallback()]}}, "BatchEndCallback.on_train_batch_end"),
    "module": ({"model": BatchStartModule(4, 3)}, "BatchStartModule.on_train_batch_start"),
    "max_steps": ({"trainer_kw": {"max_steps": 7}}, "max_steps=7"),
    "accumulate": ({"trainer_kw": {"accumulate_grad_batches": 3}}, "accumulate_grad_batches=3"),
    "val_interval": ({"trainer_kw": {"val_check_interval": 2}}, "val_check_interval=2"),
    "checkpoint": ({"trainer_kw": {"enable_checkpointing": True, "callbacks": [ModelCheckpoint(every_n_train_steps=2)]}},
                   r"ModelCheckpoint\(every_n_train_steps"),
    "scheduler": ({"model": _step_scheduler_model()}, "a step-interval LR scheduler"),
    "dropouts": ({"dropout_rate": 0.3, "seed": 1}, "simulated failures"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_auto_keeps_one_step_per_batch_when_something_needs_it_and_fused_refuses(case):
    kwargs, reason = BLOCKED[case]
    _, fit = _fit("auto", rounds=1, **kwargs)
    assert type(fit.strategy.backend) is SequentialBackend
    with pytest.raises(FederatedConfigError, match=rf"local_loop='fused'.*{reason}.*Pass local_loop='steps'"):
        _fit("fused", rounds=1, **kwargs)


def test_auto_fuses_with_lightnings_default_callbacks(tmp_path):
    callbacks = [TQDMProgressBar(), ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1)]
    _, fit = _fit("auto", rounds=1, trainer_kw={"enable_progress_bar": True, "enable_checkpointing": True,
                                                "enable_model_summary": True, "callbacks": callbacks})  # fmt: skip
    assert type(fit.strategy.backend) is FusedBackend


@pytest.mark.parametrize("value", ["fast", None, True])
def test_a_bad_local_loop_is_refused_naming_the_choices(value):
    with pytest.raises(FederatedConfigError, match=rf"`local_loop={value!r}` is not valid: choose 'auto'"):
        FederatedStrategy(local_loop=value)


def test_a_worker_with_more_than_32_batches_spans_several_lightning_steps_with_the_same_result():
    def fit(local_loop: str):
        model = _model("momentum")
        data = FedDM(tiny_dataset(140), num_workers=2, batch_size=2, seed=3)  # 35 batches a worker
        fit = trainer(max_epochs=2, strategy=FederatedStrategy(local_loop=local_loop))
        fit.fit(model, datamodule=data)
        return model, fit

    steps, _ = fit("steps")
    fused, fused_trainer = fit("fused")
    assert max_abs_diff(steps, fused) == 0.0
    assert fused_trainer.global_step == 2 * 2 * 2  # 2 rounds x 2 workers x (32 + 3 batches)


# -- the batch-transfer hooks see each real local batch -----------------------------------------------------------------
class ScaledInputs(BoringClassifier):
    """Doubles the inputs in ``on_after_batch_transfer`` (where a GPU augmentation goes) and records what each
    training call received."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(4, 3, hidden=8, lr=0.05)
        self.received: list[str] = []
        self.devices: set[tuple[str, str]] = set()  # (the batch's, the module's) device types

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch  # a local-work descriptor here would not unpack
        if self.trainer.training:
            self.received.append(type(x).__name__)
            self.devices.add((x.device.type, self.device.type))
        return [x * 2, y]


@pytest.mark.parametrize(
    "strategy_kw",
    [{"local_loop": "fused"}, {"local_loop": "auto", "vectorize": True}, {"local_loop": "auto", "parallel_workers": 2}],
    ids=["fused", "vectorized", "threaded"],
)
def test_transfer_hooks_run_on_each_real_local_batch_as_with_one_step_per_batch(strategy_kw):
    steps_model, steps_fit = _fit("steps", model=ScaledInputs())
    kw = dict(strategy_kw)
    model, fit = _fit(kw.pop("local_loop"), model=ScaledInputs(), **kw)
    assert type(steps_fit.strategy.backend) is SequentialBackend
    assert type(fit.strategy.backend) is not SequentialBackend
    assert set(steps_model.received) == {"PointerTensor"}  # at the worker, through pointers
    assert set(model.received) == {"Tensor"}  # at the worker, in its session: the real batch, never a descriptor
    assert len(model.received) == len(steps_model.received) == 3 * 12  # 3 rounds, 60 samples in batches of 5
    assert max_abs_diff(steps_model, model) < 1e-6
    plain, _ = _fit("steps")  # the hook mattered
    assert max_abs_diff(plain, model) > 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "strategy_kw",
    [{"local_loop": "steps"}, {"local_loop": "fused"}, {"local_loop": "auto", "vectorize": True},
     {"local_loop": "auto", "parallel_workers": 2}],
    ids=["steps", "fused", "vectorized", "threaded"],
)  # fmt: skip
def test_on_the_gpu_every_local_loop_trains_like_the_cpu(strategy_kw):
    kw = dict(strategy_kw)
    loop = kw.pop("local_loop")
    cpu, _ = _fit(loop, model=ScaledInputs(), trainer_kw={"accelerator": "cpu"}, **kw)
    gpu, _ = _fit(loop, model=ScaledInputs(), trainer_kw={"accelerator": "gpu", "devices": 1}, **kw)
    assert gpu.devices == {("cuda", "cuda")} and cpu.devices == {("cpu", "cpu")}  # (Lightning moves it home after)
    assert set(gpu.received) == ({"PointerTensor"} if loop == "steps" else {"Tensor"})
    assert max_abs_diff(cpu, gpu) < 1e-5
