"""Lightning features that the federated core must not break: each test is one behaviour of the core redesign
(callbacks see the worker that trains, limits cut every worker's work, lr_find runs one stream, metrics under
vectorized workers, plain module attributes stay with their worker, the privacy monitor resumes,
``estimated_stepping_batches`` in ``configure_optimizers``, ``overfit_batches`` refused, values logged without a batch
size in the vectorized loop mode, a step scheduler's ``frequency`` per worker)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.demos.lstm import LightningLSTM
from lightning.pytorch.loggers import Logger
from lightning.pytorch.tuner import Tuner
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_fed import FederatedDataModule, FederatedStrategy
from lightning_fed._compat import lightning as compat
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig, PrivacyMonitor
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers.base import current_worker
from tests.strategies.helpers import FedDM, max_abs_diff, tiny_dataset, trainer


class _MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class _StepLRModel(BoringClassifier):
    """Halves its lr every step (a step-interval scheduler, kept per worker); records the lr each step used."""

    def __init__(self) -> None:
        super().__init__(in_features=4, num_classes=3, lr=1.0)
        self.used: list[tuple[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.used.append((current_worker().id, self.trainer.optimizers[0].param_groups[0]["lr"]))
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_callbacks_see_the_worker_that_trains_the_batch_the_logged_lr_is_the_lr_used():
    logger = _MemoryLogger()
    model = _StepLRModel()
    fed = FedDM(tiny_dataset(24), num_workers=2, batch_size=4)  # 3 batches a worker
    monitor = LearningRateMonitor(logging_interval="step")
    trainer(max_epochs=2, strategy=FederatedStrategy(), logger=logger, callbacks=[monitor], log_every_n_steps=1).fit(
        model, datamodule=fed
    )
    logged = [m["lr-SGD"] for _, m in logger.rows if "lr-SGD" in m]
    used = [lr for _, lr in model.used]
    assert len(used) == 12
    assert logged == used
    # each worker's schedule is its own: a worker starts from its own previous lr, not the other worker's
    assert [lr for w, lr in model.used if w == "w1"][:3] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("limit", [0.5, 4])
def test_limit_train_batches_trains_a_share_of_every_worker_with_a_warning_naming_local_steps(limit):
    fed = FedDM(tiny_dataset(48), num_workers=3, batch_size=4)  # 4 batches a worker, 12 a round
    strategy = FederatedStrategy()
    with pytest.warns(UserWarning, match=r"limit_train_batches=.*every sampled worker.*local_steps"):
        trainer(max_epochs=2, strategy=strategy, limit_train_batches=limit).fit(
            BoringClassifier(num_classes=3), datamodule=fed
        )
    steps = {w: row["steps"] for w, row in strategy.worker_summary().items()}
    assert steps == {"w0": 4, "w1": 4, "w2": 4} if limit == 0.5 else {"w0": 2, "w1": 2, "w2": 2}
    assert strategy.round_index == 2


class _NoisyStream(BoringClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _lr_find(mode: str) -> Any:
    torch.manual_seed(0)
    fed = FedDM(tiny_dataset(96), num_workers=2, batch_size=4)
    model = _NoisyStream(num_classes=3, lr=0.01)
    tr = trainer(max_epochs=1, strategy=FederatedStrategy(mode=mode))
    finder = Tuner(tr).lr_find(model, datamodule=fed, num_training=20, early_stop_threshold=None)
    return finder, model


def test_lr_find_runs_its_range_test_on_one_continuous_stream():
    fedavg, fedavg_model = _lr_find("fedavg")
    follow, _ = _lr_find("follow")
    # the range test is one model trained on one stream of batches, whichever way the rounds later run
    assert fedavg.results["loss"] == pytest.approx(follow.results["loss"], rel=1e-6)
    assert fedavg.suggestion() == follow.suggestion()
    assert fedavg_model.hparams.lr == fedavg.suggestion()  # the Tuner applied it; training then runs rounds


class _TrainMetric(BoringClassifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_acc = MulticlassAccuracy(num_classes=3, average="micro")
        self.epoch_acc: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.log("train_acc", self.train_acc(logits, y), batch_size=len(y))
        return F.cross_entropy(logits, y)

    def on_train_epoch_end(self) -> None:
        self.epoch_acc.append(float(self.train_acc.compute()))
        self.train_acc.reset()


def test_vectorized_workers_with_a_torchmetrics_metric_take_the_loop_mode_with_one_warning():
    runs = {}
    for vectorize in (False, True):
        torch.manual_seed(0)
        model = _TrainMetric(num_classes=3, hidden=8)
        fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer(max_epochs=2, strategy=FederatedStrategy(vectorize=vectorize)).fit(model, datamodule=fed)
            runs[vectorize] = model
        notes = [w for w in record if "torchmetrics metric 'train_acc'" in str(w.message)]
        assert len(notes) == (1 if vectorize else 0)
    assert max_abs_diff(runs[False], runs[True]) < 1e-5
    assert runs[True].epoch_acc == pytest.approx(runs[False].epoch_acc)  # the metric's state is not corrupted
    assert runs[True].trainer.strategy.backend.vector.use_vmap is False


class _KeepsHidden(LightningLSTM):
    """Lightning's LSTM demo (it keeps ``self.hidden`` across batches), recording what each worker starts from."""

    def __init__(self) -> None:
        super().__init__(vocab_size=11)
        self.starts: list[tuple[str, bool]] = []
        self._last: str | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        worker = current_worker().id
        if worker != self._last:
            self.starts.append((worker, self.hidden is None))
            self._last = worker
        return super().training_step(batch, batch_idx)

    def prepare_data(self) -> None:  # the demo downloads WikiText-2 here; this test brings its own tokens
        pass

    def on_train_epoch_end(self) -> None:
        self._last = None  # the demo resets self.hidden here on purpose; keep it to test the round's reset
        assert self.trainer.strategy.rounds.module_is_global


def test_tensors_in_plain_module_attributes_do_not_cross_from_one_worker_to_the_next():
    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (16, 6))
    data = TensorDataset(tokens, torch.roll(tokens, -1, dims=1))
    fed = FedDM(data, num_workers=2, batch_size=4, drop_last=True)
    model = _KeepsHidden()
    trainer(max_epochs=2, strategy=FederatedStrategy()).fit(model, datamodule=fed)
    # every worker's first batch starts from the module's state at the round's start (no hidden state), never
    # from the previous worker's
    assert model.starts == [("w0", True), ("w1", True), ("w0", True), ("w1", True)]


def test_the_privacy_monitor_history_survives_resume(tmp_path):
    def fit(max_epochs: int, ckpt_path: Any = None) -> pl.Trainer:
        torch.manual_seed(0)
        fed = FedDM(tiny_dataset(32), num_workers=4, batch_size=8)
        privacy = DPConfig(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=None)
        tr = trainer(
            max_epochs=max_epochs, strategy=FederatedStrategy(privacy=privacy), enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        )  # fmt: skip
        tr.fit(BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=ckpt_path)
        return tr

    first = fit(2)
    resumed = fit(3, ckpt_path=tmp_path / "last.ckpt")
    (monitor,) = [c for c in resumed.callbacks if isinstance(c, PrivacyMonitor)]
    (before,) = [c for c in first.callbacks if isinstance(c, PrivacyMonitor)]
    assert len(monitor.history) == 3
    assert monitor.history[:2] == before.history


def test_a_mid_round_checkpoint_a_backend_cannot_continue_is_refused_for_resuming_and_fine_for_evaluating(tmp_path):
    # vectorized cohorts keep stacked state the checkpoint does not hold: the open round is only marked
    # (tests/strategies/test_mid_round_resume.py: the sequential backend continues a round exactly)
    fed = FedDM(tiny_dataset(64), num_workers=2, batch_size=4)  # 8 vectorized steps a round
    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    with pytest.warns(UserWarning, match=r"middle of federated round 0 \(step 3 of 8\) with VectorizedBackend"):
        trainer(
            max_epochs=1, strategy=FederatedStrategy(vectorize=True), enable_checkpointing=True, callbacks=[every_step]
        ).fit(BoringClassifier(num_classes=3), datamodule=fed)
    with pytest.raises(FederatedConfigError, match=r"middle of federated round 0 \(step 3 of 8\).*Resume from a che"):
        trainer(max_epochs=2, strategy=FederatedStrategy(vectorize=True)).fit(
            BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=tmp_path / "step=3.ckpt"
        )
    validated = trainer(strategy=FederatedStrategy()).validate(
        BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=tmp_path / "step=3.ckpt"
    )
    assert 0.0 <= validated[0]["val_acc"] <= 1.0
    # the round's last step is a round end: resuming from it continues with the next round, where Lightning counts
    # that step as done (>= 2.5); older Lightning re-runs the step on resume, so the checkpoint is refused there too
    resumed = trainer(max_epochs=2, strategy=FederatedStrategy(vectorize=True))
    if compat.release_of(lightning.__version__) < (2, 5):
        with pytest.raises(FederatedConfigError, match=r"middle of federated round 0 \(step 8 of 8\)"):
            resumed.fit(BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=tmp_path / "step=8.ckpt")
        return
    resumed.fit(BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=tmp_path / "step=8.ckpt")
    assert resumed.strategy.round_index == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"aggregation": "scaffold"},
        {"secure_aggregation": True, "dropout_rate": 0.2, "seed": 1},
        {"privacy": DPConfig(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=None)},
        {"mode": "follow"},
    ],
    ids=["fedavg", "scaffold", "secure-dropout", "client-dp", "follow"],
)
def test_checkpoints_load_with_weights_only(tmp_path, kwargs):
    fed = FedDM(tiny_dataset(32), num_workers=4, batch_size=8)
    tr = trainer(max_epochs=1, strategy=FederatedStrategy(**kwargs))
    tr.fit(BoringClassifier(num_classes=3, optimizer="momentum"), datamodule=fed)
    tr.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)  # tensors, numbers and strings only
    assert checkpoint["federated"]["round_index"] == (0 if kwargs.get("mode") == "follow" else 1)


class _SeesBatches(BoringClassifier):
    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.sizes: set[int] = set()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.sizes.add(len(batch[1]))
        return super().training_step(batch, batch_idx)


def test_scale_batch_size_rereads_the_batch_size_when_the_loader_is_rebuilt():
    data = FederatedDataModule.from_datasets(tiny_dataset(96), tiny_dataset(16), workers=2, batch_size=2, seed=0)
    model = _SeesBatches()
    new_size = Tuner(trainer(max_epochs=1, strategy=FederatedStrategy())).scale_batch_size(
        model, datamodule=data, mode="power", steps_per_trial=1, max_trials=3
    )
    assert new_size > 2 and data.batch_size == new_size
    assert max(model.sizes) > 2  # the trials trained in the larger sizes they tried (frozen at 2 before)
    # a fit after the search trains every worker in batches of the size found
    model.sizes.clear()
    fit = trainer(max_epochs=1, strategy=FederatedStrategy())
    fit.fit(model, datamodule=data)
    assert model.sizes == {new_size} and fit.strategy.backend.loader.batch_size == new_size
    assert all(row["steps"] > 0 for row in fit.strategy.worker_summary().values())


class _ReadsStepCount(BoringClassifier):
    """Lightning's pattern for a schedule over the whole run: ``estimated_stepping_batches`` read while configuring
    the optimizers (which sets the train data up inside the strategy's setup)."""

    def configure_optimizers(self) -> Any:
        self.estimated = self.trainer.estimated_stepping_batches
        return super().configure_optimizers()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"local_loop": "steps"}, {"vectorize": True}, {"parallel_workers": 2}, {"mode": "follow"}],
    ids=["fused", "steps", "vectorized", "threads", "follow"],
)
def test_estimated_stepping_batches_read_in_configure_optimizers_leaves_the_fit_as_it_was(kwargs):
    runs = {}
    for cls in (BoringClassifier, _ReadsStepCount):
        torch.manual_seed(0)
        model = cls(num_classes=3, hidden=8)
        fit = trainer(max_epochs=2, strategy=FederatedStrategy(num_threads=None, **kwargs))
        fit.fit(model, datamodule=FedDM(tiny_dataset(24), num_workers=2, batch_size=4))  # 3 batches a worker
        runs[cls] = model, fit
    (plain, plain_fit), (reads, reads_fit) = runs.values()
    assert max_abs_diff(plain, reads) == 0.0 and reads_fit.global_step == plain_fit.global_step
    assert reads_fit.strategy.round_index == plain_fit.strategy.round_index
    assert [w.id for w in reads_fit.strategy.workers] == [w.id for w in plain_fit.strategy.workers] == ["w0", "w1"]
    assert reads.estimated == 2 * 6  # the local batches that step an optimizer: 2 rounds of 6


class _OneCycle(_ReadsStepCount):
    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=self.estimated)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_one_cycle_lr_over_the_estimated_stepping_batches_trains():
    model = _OneCycle(num_classes=3, hidden=8)
    fit = trainer(max_epochs=2, strategy=FederatedStrategy(num_threads=None))
    fit.fit(model, datamodule=FedDM(tiny_dataset(24), num_workers=2, batch_size=4))
    assert fit.global_step == model.estimated == 12  # a step-interval scheduler: one Lightning step per batch
    assert fit.strategy.round_index == 2


@pytest.mark.parametrize("mode", ["fedavg", "follow"])
def test_overfit_batches_is_refused_naming_the_value_and_what_to_use_instead(mode):
    fit = trainer(max_epochs=1, overfit_batches=2, strategy=FederatedStrategy(mode=mode))
    names = r"`Trainer\(overfit_batches=2\)`.*limit_train_batches=2.*local_steps"  # the value and what to use instead
    with pytest.raises(FederatedConfigError, match=names):  # before the train data is set up (it reads the count)
        fit.fit(_ReadsStepCount(num_classes=3), datamodule=FedDM(tiny_dataset(24), num_workers=2, batch_size=4))


class _LogsUnbatchable(BoringClassifier):
    """Reads a loss's value (which ``vmap`` cannot batch: vectorized workers take the loop mode) and logs a value
    without a batch size, through ``log_dict`` or ``log(..., batch_size=None)``."""

    def __init__(self, how: str) -> None:
        super().__init__(num_classes=3, hidden=8)
        self.how = how

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        assert loss.item() == loss.item()  # a Python number: not under vmap
        self.log("loss", loss, on_step=False, on_epoch=True)
        if self.how == "log_dict":
            self.log_dict({"twice": 2 * loss}, on_step=False, on_epoch=True)
        else:
            self.log("twice", 2 * loss, on_step=False, on_epoch=True, batch_size=None)
        return loss


@pytest.mark.parametrize("local_loop", ["auto", "steps"])
@pytest.mark.parametrize("how", ["log_dict", "log"])
def test_vectorized_loop_mode_logs_the_sequential_paths_epoch_values_without_a_batch_size(how, local_loop):
    values = []
    for kwargs in ({"local_loop": "steps"}, {"vectorize": True, "local_loop": local_loop}):
        torch.manual_seed(0)
        fit = trainer(max_epochs=1, strategy=FederatedStrategy(num_threads=None, **kwargs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the loop mode's note
            fit.fit(_LogsUnbatchable(how), datamodule=FedDM(tiny_dataset(60), num_workers=3, batch_size=8))
        values.append([float(fit.callback_metrics[k]) for k in ("loss", "twice")])  # batches of 8, 8 and 4
    sequential, vectorized = values
    assert vectorized == pytest.approx(sequential, abs=1e-6) and sequential[1] == pytest.approx(2 * sequential[0])


class _EveryThirdStep(_StepLRModel):
    """Halves its lr every third step (``frequency=3``)."""

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        config["lr_scheduler"]["frequency"] = 3
        return config


def test_a_step_scheduler_with_a_frequency_counts_each_workers_own_batches_across_rounds_and_resumes(tmp_path):
    def run(max_epochs: int, **kwargs: Any) -> tuple[_EveryThirdStep, pl.Trainer]:
        model = _EveryThirdStep()
        saves = [ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)] if max_epochs == 1 else []
        fit = trainer(max_epochs=max_epochs, strategy=FederatedStrategy(), enable_checkpointing=bool(saves),
                      callbacks=saves)  # fmt: skip
        fit.fit(model, datamodule=FedDM(tiny_dataset(48), num_workers=3, batch_size=4), **kwargs)  # 4 batches each
        return model, fit

    model, fit = run(2)
    for worker in ("w0", "w1", "w2"):  # whichever place a worker has in its rounds
        assert [lr for w, lr in model.used if w == worker] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert fit.lr_scheduler_configs[0].frequency == 3  # as given, after fit
    run(1)  # its last.ckpt: each worker's schedule and count after its 4 batches
    resumed, _ = run(2, ckpt_path=str(tmp_path / "last.ckpt"))
    for worker in ("w0", "w1", "w2"):
        assert [lr for w, lr in resumed.used if w == worker] == [0.5, 0.5, 0.25, 0.25]


class _FailsAtStep(BoringClassifier):
    def __init__(self, fail_at: int | None) -> None:
        super().__init__(num_classes=3)
        self.fail_at, self.calls = fail_at, 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the training step failed")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    "kwargs", [{}, {"local_loop": "steps"}, {"vectorize": True}], ids=["fused", "steps", "vectorized"]
)
def test_a_fit_that_raises_leaves_the_global_model_in_the_module_not_a_workers(kwargs):
    def fit(fail_at: int | None, rounds: int) -> tuple[_FailsAtStep, list[torch.Tensor]]:
        pl.seed_everything(0)
        model = _FailsAtStep(fail_at)
        data = FederatedDataModule.from_datasets(tiny_dataset(48), tiny_dataset(8), workers=2, batch_size=8, seed=0)
        run = trainer(max_epochs=rounds, strategy=FederatedStrategy(**kwargs))
        if fail_at is None:
            run.fit(model, datamodule=data)
        else:
            with pytest.raises(Exception, match="the training step failed"):
                run.fit(model, datamodule=data)
        return model, [p.detach().clone() for p in model.parameters()]

    _, after_one_round = fit(None, 1)
    steps_a_round = fit(None, 1)[0].calls
    model, after_failure = fit(steps_a_round + 2, 3)  # fails in round 1, the first worker's local work under way
    assert all(torch.equal(a, b) for a, b in zip(after_failure, after_one_round, strict=True))  # round 0's global
    assert all(p.grad is None for p in model.parameters())


class _SeesEpochEnd(BoringClassifier):
    def on_train_epoch_end(self) -> None:
        self.at_epoch_end = [p.detach().clone() for p in self.parameters()]


class _StopsAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop", ["max_steps", "should_stop"])
@pytest.mark.parametrize("kwargs", [{}, {"local_loop": "steps"}, {"vectorize": True}], ids=["fused", "steps", "vec"])
def test_a_stop_in_the_middle_of_a_round_ends_with_one_model_everywhere(tmp_path, stop, kwargs):
    pl.seed_everything(0)
    model = _SeesEpochEnd(num_classes=3)
    data = FederatedDataModule.from_datasets(tiny_dataset(96), tiny_dataset(8), workers=3, batch_size=8, seed=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    callbacks = [checkpoints] + ([_StopsAt(2)] if stop == "should_stop" else [])
    run = trainer(max_epochs=3, strategy=FederatedStrategy(**kwargs), callbacks=callbacks, enable_checkpointing=True,
                  **({"max_steps": 2} if stop == "max_steps" else {}))  # fmt: skip
    run.fit(model, datamodule=data)
    assert run.strategy.round_index == 1  # the round cut short was aggregated
    final = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.at_epoch_end, final, strict=True))  # the module's hook
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[name], p.detach()) for name, p in model.named_parameters())  # and last.ckpt


@pytest.mark.parametrize("fast_dev_run", [True, 3])
def test_fast_dev_run_reaches_every_sampled_worker_in_one_round(fast_dev_run):
    data = FederatedDataModule.from_datasets(tiny_dataset(96), tiny_dataset(8), workers=3, batch_size=8, seed=0)
    run = pl.Trainer(strategy=FederatedStrategy(), fast_dev_run=fast_dev_run, logger=False, enable_progress_bar=False,
                     enable_model_summary=False)  # fmt: skip
    run.fit(BoringClassifier(num_classes=3), datamodule=data)
    assert run.strategy.round_index == 1
    assert [row["steps"] for row in run.strategy.worker_summary().values()] == [1, 1, 1]  # at least one each


class _BatchIdxModel(BoringClassifier):
    """Records the ``batch_idx`` each local step gets and skips the optimizer step on every third one (a step that
    depends on ``batch_idx``)."""

    def __init__(self) -> None:
        super().__init__(in_features=4, num_classes=3, lr=0.1, optimizer="momentum")
        self.seen: list[tuple[str, int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        self.seen.append((current_worker().id, int(batch_idx)))
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx % 3 == 1 else loss


class _BatchEndCallback(pl.Callback):
    """Overrides ``on_train_batch_end``: ``local_loop="auto"`` then takes one Lightning step per batch."""

    def on_train_batch_end(self, *args: Any) -> None:
        pass


def _fit_batch_idx(strategy: FederatedStrategy, callbacks: list) -> _BatchIdxModel:
    pl.seed_everything(0)
    model = _BatchIdxModel()
    fed = FedDM(tiny_dataset(32), num_workers=2, batch_size=4)  # 4 batches a worker
    trainer(max_epochs=2, strategy=strategy, callbacks=callbacks).fit(model, datamodule=fed)
    return model


@pytest.mark.parametrize(
    "kwargs, callbacks",
    [({"local_loop": "steps"}, []), ({}, []), ({}, [_BatchEndCallback()])],
    ids=["steps", "fused", "auto-with-callback"],
)
def test_training_step_gets_the_workers_own_batch_index_on_every_local_loop(kwargs, callbacks):
    """A callback must not change training: every path numbers each worker's batches of a round from 0 (fused,
    threaded, vectorized and remote steps always did; one Lightning step per batch passed the round's index)."""
    model = _fit_batch_idx(FederatedStrategy(num_threads=None, **kwargs), callbacks)
    by_worker: dict[str, list[int]] = {}
    for worker, idx in model.seen:
        by_worker.setdefault(worker, []).append(idx)
    assert sorted(by_worker.values()) == [[0, 1, 2, 3, 0, 1, 2, 3]] * 2  # two rounds of 4 batches each
    reference = _fit_batch_idx(FederatedStrategy(num_threads=None, local_loop="steps"), [])
    assert max_abs_diff(model, reference) == 0.0


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
@pytest.mark.parametrize("kwargs", [{}, {"vectorize": True}], ids=["fused", "vectorized"])
def test_true_precision_casts_the_batches_a_backend_gathers_itself(precision, kwargs):
    """Lightning's precision plugin converts each batch's floats (``convert_input``) before the transfer: the
    backends that gather their workers' batches themselves do the same, and train as one step per batch does."""
    if precision == "bf16-true" and kwargs:
        with pytest.raises(FederatedConfigError, match="vectorize=True` supports 32/64-bit precision"):
            trainer(max_epochs=1, strategy=FederatedStrategy(**kwargs), precision=precision).fit(
                BoringClassifier(in_features=4, num_classes=3), datamodule=FedDM(tiny_dataset(16), num_workers=2)
            )
        return
    runs = []
    for strategy_kwargs in ({"local_loop": "steps"}, kwargs):
        pl.seed_everything(0)
        model = BoringClassifier(in_features=4, num_classes=3, lr=0.1)
        fed = FedDM(tiny_dataset(32), num_workers=2, batch_size=4)
        trainer(max_epochs=2, strategy=FederatedStrategy(num_threads=None, **strategy_kwargs), precision=precision).fit(
            model, datamodule=fed
        )
        runs.append(model)
    dtype = torch.float64 if precision == "64-true" else torch.bfloat16
    assert all(p.dtype == dtype for p in runs[1].parameters())
    assert max_abs_diff(runs[0], runs[1]) == 0.0
