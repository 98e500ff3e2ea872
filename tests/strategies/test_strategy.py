"""FederatedStrategy with the rest of Lightning: registry, callbacks, logging, schedulers, errors."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import StrategyRegistry
from torch.utils.data import DataLoader

from lightning_fed import FederatedConfigError, FederatedStrategy
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer


def test_registered_names_build_the_strategy():
    for name, mode in (("federated", "fedavg"), ("fedavg", "fedavg"), ("federated_follow", "follow")):
        assert name in StrategyRegistry
        strategy = StrategyRegistry.get(name)
        assert isinstance(strategy, FederatedStrategy) and strategy.mode == mode


def test_training_steps_run_at_the_worker_that_owns_the_batch():
    from lightning_fed.workers import current_worker

    seen = []

    class Spy(BoringClassifier):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            seen.append((current_worker().id, type(x).__name__))
            return super().training_step(batch, batch_idx)

    data = FedDM(tiny_dataset(32), num_workers=2, batch_size=8)
    trainer(max_epochs=1, strategy="federated").fit(Spy(4, 3), datamodule=data)
    assert seen == [("w0", "Tensor")] * 2 + [("w1", "Tensor")] * 2  # real tensors, inside each worker
    assert all(len(w.objects) == 1 for w in data.workers)  # only the shard remains: batches were freed


def test_full_lightning_feature_set_runs_with_fedavg(tmp_path):
    class WithScheduler(BoringClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}

    data = FedDM(tiny_dataset(48), num_workers=3, batch_size=4)
    model = WithScheduler(4, 3, hidden=8, batch_norm=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    t = pl.Trainer(
        strategy=FederatedStrategy(clients_per_round=2),
        max_epochs=3,
        logger=CSVLogger(tmp_path),
        callbacks=[ckpt, EarlyStopping(monitor="val_loss", patience=5)],
        gradient_clip_val=0.5,
        accumulate_grad_batches=2,
        log_every_n_steps=1,
        enable_progress_bar=True,
        enable_model_summary=False,
    )
    t.fit(model, datamodule=data)
    assert t.strategy.round_index == 3
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # one scheduler step per round
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val_acc" in metrics and any(f"train_loss/w{i}" in metrics for i in range(3))
    val = t.validate(model, datamodule=data, verbose=False)[0]
    test = t.test(model, dataloaders=DataLoader(data.dataset, batch_size=16), verbose=False)[0]
    assert 0.0 <= val["val_acc"] <= 1.0 and 0.0 <= test["test_acc"] <= 1.0
    preds = t.predict(model, dataloaders=DataLoader(data.dataset, batch_size=16))
    assert torch.cat(preds).shape == (48,)


@pytest.mark.parametrize("local_loop", ["steps", "fused"])
def test_validation_runs_once_per_round_on_the_global_model_even_when_rounds_differ_in_length(local_loop):
    events = []

    class Recorder(Callback):
        def on_validation_start(self, trainer, pl_module):
            events.append(("val", trainer.current_epoch, trainer.strategy.round_index, trainer.num_training_batches))

    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, partition="quantity_skew", seed=7)
    strategy = FederatedStrategy(clients_per_round=2, local_loop=local_loop)
    t = trainer(max_epochs=4, strategy=strategy, callbacks=[Recorder()])
    t.fit(BoringClassifier(4, 3), datamodule=data)
    lengths = [t.strategy.round_plan(r).total_steps for r in range(4)]
    assert len(set(lengths)) > 1  # the scenario under test: rounds of different local work
    steps = lengths if local_loop == "steps" else [2] * 4  # fused: one Lightning step per sampled worker
    assert events == [("val", r, r + 1, steps[r]) for r in range(4)]


def test_progress_bar_shows_round_and_worker(capfd):
    data = FedDM(tiny_dataset(16), num_workers=2, batch_size=8, prefix="school")
    pl.Trainer(strategy="federated", max_epochs=1, logger=False, enable_checkpointing=False,
               enable_model_summary=False).fit(BoringClassifier(4, 3), datamodule=data)  # fmt: skip
    captured = capfd.readouterr()
    err = captured.out + captured.err
    assert "Round 0 · school0" in err and "Round 0 · school1" in err


def test_summary_and_worker_table_are_logged(caplog):
    data = FedDM(tiny_dataset(16), num_workers=2, batch_size=8, prefix="clinic")
    with caplog.at_level("INFO"):
        trainer(max_epochs=1, strategy="federated").fit(BoringClassifier(4, 3), datamodule=data)
    text = caplog.text
    assert "FederatedStrategy: 2 workers [clinic0 (8 samples), clinic1 (8 samples)]" in text
    assert "last loss" in text and "clinic1" in text


def test_the_end_of_fit_worker_table_shows_20_workers_and_how_many_more(caplog):
    data = FedDM(tiny_dataset(100), num_workers=25, batch_size=4, prefix="site")
    with caplog.at_level("INFO"):
        fit = trainer(max_epochs=1, strategy=FederatedStrategy(clients_per_round=3))
        fit.fit(BoringClassifier(4, 3), datamodule=data)
    table = fit.strategy.worker_table().splitlines()
    assert len(table) == 1 + 20 + 1 and table[-1] == "... and 5 more workers (strategy.worker_summary(): all)"
    assert "\n".join(table) in caplog.text
    assert len(fit.strategy.worker_summary()) == 25  # every worker is still there


def test_summary_of_many_workers_stays_one_short_line(caplog):
    data = FedDM(tiny_dataset(48), num_workers=12, batch_size=4, prefix="site")
    with caplog.at_level("INFO"):
        trainer(max_epochs=1, strategy=FederatedStrategy(clients_per_round=2)).fit(
            BoringClassifier(4, 3), datamodule=data
        )
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FederatedStrategy: ")]
    assert "FederatedStrategy: 12 workers [site0 (4 samples), site1 (4 samples)," in line
    assert "site9 (4 samples), ... and 2 more]" in line and "site10" not in line


# -- errors ---------------------------------------------------------------------------------------------------------
class _PlainDM(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(tiny_dataset(8), batch_size=4)


def test_non_pointer_training_batches_name_federated_datamodule():
    with pytest.raises(FederatedConfigError, match="FederatedDataModule"):
        trainer(max_epochs=1, strategy="federated").fit(BoringClassifier(4, 3), datamodule=_PlainDM())


@pytest.mark.parametrize("value", [0, 5, -1, 1.5, 0.0, "all", True])
def test_clients_per_round_out_of_range(value):
    data = FedDM(tiny_dataset(16), num_workers=4, batch_size=2)
    with pytest.raises(FederatedConfigError, match=f"clients_per_round={value!r}"):
        trainer(max_epochs=1, strategy=FederatedStrategy(clients_per_round=value)).fit(
            BoringClassifier(4, 3), datamodule=data
        )


def test_worker_with_no_data_is_named():
    data = FedDM(tiny_dataset(9), num_workers=3, batch_size=4, drop_last=True)  # 3 samples each: no full batch
    with pytest.raises(FederatedConfigError, match="worker 'w0' has no data to train on: 3 samples give 0 batches"):
        trainer(max_epochs=1, strategy="federated").fit(BoringClassifier(4, 3), datamodule=data)


def test_several_devices_need_fedavg_rounds():
    # several processes are tests/strategies/test_distributed.py's; the one-model-follows mode stays in one process
    with pytest.raises(FederatedConfigError, match=r"mode='follow'.*devices=2, num_nodes=1.*devices=1"):
        trainer(max_epochs=1, strategy=FederatedStrategy(mode="follow"), accelerator="cpu", devices=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "async"}, "mode='async'"),
        ({"local_epochs": 0}, "local_epochs=0"),
        ({"local_steps": 0}, "local_steps=0"),
        ({"aggregation": "median-of-means"}, "aggregation='median-of-means'"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedStrategy(**kwargs)


def test_fedavg_refuses_manual_optimization_and_follow_mode_supports_it():
    class Manual(BoringClassifier):
        def __init__(self):
            super().__init__(4, 3)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.manual_backward(loss)
            opt.step()
            return loss

    data = FedDM(tiny_dataset(16), num_workers=2, batch_size=4)
    with pytest.raises(FederatedConfigError, match="automatic_optimization=True"):
        trainer(max_epochs=1, strategy="federated").fit(Manual(), datamodule=data)
    model = Manual()
    before = [p.detach().clone() for p in model.parameters()]
    trainer(max_epochs=1, strategy="federated_follow").fit(model, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accumulation_that_would_mix_workers_is_refused():
    data = FedDM(tiny_dataset(24), num_workers=2, batch_size=4)  # 3 batches per worker
    with pytest.raises(FederatedConfigError, match="accumulate_grad_batches=2"):
        trainer(max_epochs=1, strategy="federated", accumulate_grad_batches=2).fit(
            BoringClassifier(4, 3), datamodule=data
        )


class _StepScheduled(BoringClassifier):
    seen: list

    def training_step(self, batch, batch_idx):
        from lightning_fed.workers import current_worker

        self.seen.append((current_worker().id, self.optimizers().param_groups[0]["lr"]))
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_step_interval_schedulers_advance_per_worker_across_rounds():
    model = _StepScheduled(4, 3)
    model.seen = []
    data = FedDM(tiny_dataset(32), num_workers=2, batch_size=8)  # 2 batches per worker per round
    trainer(max_epochs=3, strategy="federated").fit(model, datamodule=data)
    for worker in ("w0", "w1"):
        lrs = [lr for w, lr in model.seen if w == worker]
        assert lrs == pytest.approx([0.1 * 0.5**k for k in range(6)])  # its own 6 steps, continued across rounds


def test_mixing_step_and_epoch_schedulers_is_refused():
    class Mixed(BoringClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [
                {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "interval": "step"},
                {"scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), "interval": "epoch"},
            ]

    with pytest.raises(FederatedConfigError, match="step-interval LR schedulers per worker and epoch-interval"):
        trainer(max_epochs=1, strategy="federated").fit(Mixed(4, 3), datamodule=FedDM(tiny_dataset(16), batch_size=8))


def test_bf16_mixed_precision_on_cpu():
    data = FedDM(tiny_dataset(32), num_workers=2, batch_size=8)
    model = BoringClassifier(4, 3, hidden=8)
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_epochs=2, strategy="federated", precision="bf16-mixed", accelerator="cpu")
    t.fit(model, datamodule=data)
    assert t.strategy.round_index == 2 and all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_per_worker_loss_is_the_rounds_sample_weighted_mean(tmp_path):
    from lightning_fed.workers import current_worker

    seen = []

    class Spy(BoringClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            seen.append((current_worker().id, loss.item(), batch[0].shape[0]))
            return loss

    data = FedDM(tiny_dataset(28), num_workers=2, batch_size=4)  # 14 samples each: batches of 4, 4, 4, 2
    t = pl.Trainer(strategy="federated", max_epochs=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    t.fit(Spy(4, 3), datamodule=data)
    for worker in ("w0", "w1"):
        steps = [(loss, n) for w, loss, n in seen if w == worker]
        expected = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
        assert t.callback_metrics[f"train_loss/{worker}"].item() == pytest.approx(expected, rel=1e-5)
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open()))
    worker_rows = [row for row in rows if row.get("train_loss/w0")]
    assert worker_rows and all(row["epoch"] == "0" for row in worker_rows)  # the round, as Lightning logs it
    assert "train_loss/w1" in rows[0]
