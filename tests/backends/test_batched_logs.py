"""``backends.batched_logs``: a fused Lightning step hands each logged name to Lightning once, and the epoch values
equal those of one ``self.log`` call per batch (the oracle: ``local_loop="steps"``, and Lightning's own reductions)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_fed import FederatedStrategy
from lightning_fed.backends.batched_logs import batched_logs, shadowed_log
from lightning_fed.exceptions import WorkerError
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer


class Recorded:
    """A stand-in for a LightningModule: its ``log`` records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, value, {"args": args, **kwargs} if args else kwargs))

    @classmethod
    def of(cls, calls: list) -> Recorded:
        module = cls()
        module.calls = list(calls)
        return module


def _values(module: Recorded) -> list[tuple[str, float, dict[str, Any]]]:
    return [(name, round(float(value), 6), kwargs) for name, value, kwargs in module.calls]


# -- the merge itself -----------------------------------------------------------------------------------------------
def test_an_epoch_mean_is_weighed_by_the_batch_sizes_lightning_would_use():
    module = Recorded()
    with batched_logs(module) as logs:
        for loss, size in [(1.0, 4), (2.0, 4), (7.0, 2)]:
            logs.batch = (torch.zeros(size, 3), torch.zeros(size))  # Lightning's extract_batch_size: 4, 4, 2
            module.log("loss", torch.tensor(loss), on_epoch=True)
            module.log("given", torch.tensor(loss), on_epoch=True, batch_size=10 * size)
        assert module.calls == []  # nothing reaches Lightning inside the block
    # (1*4 + 2*4 + 7*2) / 10 = 2.6, logged with batch_size 10: Lightning accumulates 26 over 10 samples, as before
    assert _values(module) == [("loss", 2.6, {"on_epoch": True, "batch_size": 10}),
                               ("given", 2.6, {"on_epoch": True, "batch_size": 100})]  # fmt: skip


def test_a_value_logged_on_step_only_is_the_plain_mean_and_max_min_sum_merge_as_lightning_reduces():
    module = Recorded()
    with batched_logs(module) as logs:
        for i, value in enumerate([3.0, -1.0, 4.0]):
            logs.batch = torch.zeros(i + 1, 2)  # unequal sizes, not weighed: Lightning weighs only an epoch mean
            module.log("step_only", value)
            module.log("top", torch.tensor(value), reduce_fx="max", on_epoch=True)
            module.log("low", torch.tensor(value), reduce_fx=torch.min, on_epoch=True)
            module.log("total", torch.tensor(value), reduce_fx="sum", on_epoch=True)
    assert _values(module) == [
        ("step_only", 2.0, {"batch_size": 3}),
        ("top", 4.0, {"reduce_fx": "max", "on_epoch": True}),
        ("low", -1.0, {"reduce_fx": torch.min, "on_epoch": True}),
        ("total", 6.0, {"reduce_fx": "sum", "on_epoch": True}),
    ]
    assert module.calls[0][1].dtype == torch.get_default_dtype()  # a Python number becomes Lightning's float


def test_calls_that_one_call_cannot_carry_go_to_lightning_at_once_and_in_order():
    module = Recorded()
    odd = {"reduce_fx": lambda t: t.median()}
    with batched_logs(module) as logs:
        logs.batch = torch.zeros(2, 1)
        module.log("synced", torch.tensor(1.0), sync_dist=True)
        module.log("graph", torch.tensor(1.0), enable_graph=True)
        module.log("median", torch.tensor(1.0), **odd)
        module.log("vector", torch.ones(3))
        module.log("positional", torch.tensor(1.0), True)
        module.log("loss", torch.tensor(1.0))
        assert [name for name, _, _ in module.calls] == ["synced", "graph", "median", "vector", "positional"]
        module.log("loss", torch.tensor(3.0), prog_bar=True)  # other options: the pending value goes first
        assert [name for name, _, _ in module.calls][-2:] == ["loss", "loss"]
    assert _values(Recorded.of(module.calls[-2:])) == [("loss", 1.0, {"batch_size": 1}),
                                                      ("loss", 3.0, {"prog_bar": True})]  # fmt: skip


def test_an_error_in_the_block_is_the_one_raised_and_what_was_logged_before_it_reaches_lightning():
    module = Recorded()
    with pytest.raises(ValueError, match="the batch failed"), batched_logs(module) as logs:
        logs.batch = torch.zeros(2, 1)
        module.log("loss", torch.tensor(5.0))
        raise ValueError("the batch failed")
    assert _values(module) == [("loss", 5.0, {"batch_size": 1})]
    assert "log" not in vars(module)  # LightningModule.log again


def test_shadowed_log_restores_an_outer_shadow():
    module = Recorded()
    outer, inner = (lambda *a, **k: "outer"), (lambda *a, **k: "inner")
    with shadowed_log(module, outer):
        with shadowed_log(module, inner):
            assert module.log("x", 1) == "inner"
        assert module.log("x", 1) == "outer"
    assert "log" not in vars(module) and module.log("x", 1) is None


# -- in a fit: the oracle is the per-batch path ------------------------------------------------------------------------
class ManyLogs(BoringClassifier):
    """Logs what a Lightning user logs: an epoch mean, a value on the progress bar, reductions, a dict, a number."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # "train_loss", on_step and on_epoch
        x, _ = batch
        self.log("x_max", x.max(), reduce_fx="max", on_epoch=True, prog_bar=True)
        self.log("x_min", x.min(), reduce_fx="min", on_epoch=True)
        self.log("seen", float(len(x)), reduce_fx="sum", on_epoch=True, on_step=False)
        self.log_dict({"x_mean": x.mean(), "half_loss": loss / 2}, on_epoch=True)
        return loss


def lightning_log_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the name of every call that reaches ``LightningModule.log``, in order."""
    calls: list[str] = []
    log = pl.LightningModule.log

    def counted(self, name, *args, **kwargs):
        calls.append(name)
        return log(self, name, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", counted)
    return calls


def _fit(local_loop: str, rounds: int = 2, **strategy_kw: Any) -> pl.Trainer:
    torch.manual_seed(0)
    model = ManyLogs(4, 3, hidden=8, lr=0.05)
    data = FedDM(tiny_dataset(60), num_workers=3, batch_size=4, seed=3)  # shards of 20: batches of 4
    fit = trainer(max_epochs=rounds, strategy=FederatedStrategy(local_loop=local_loop, **strategy_kw))
    fit.fit(model, datamodule=data)
    return fit


def test_a_fused_fit_logs_the_epoch_values_of_one_call_per_batch_and_calls_lightning_once_a_name_a_step(
    monkeypatch,
):
    steps = _fit("steps")
    calls = lightning_log_calls(monkeypatch)
    fused = _fit("fused")
    names = ("train_loss", "x_max", "x_min", "seen", "x_mean", "half_loss")
    for key in ("train_loss_epoch", "x_max_epoch", "x_min_epoch", "seen", "x_mean_epoch", "half_loss_epoch"):
        assert float(fused.callback_metrics[key]) == pytest.approx(float(steps.callback_metrics[key]), abs=1e-6), key
    assert float(fused.callback_metrics["seen"]) == 60  # every sample of the last round, summed over its batches
    lightning_steps = fused.global_step  # one per worker a round: 5 local batches each
    assert lightning_steps == 2 * 3 and calls.count("train_loss") == lightning_steps
    in_training = [name for name in calls if not name.startswith("val_")]  # validation logs as Lightning does
    assert sorted(set(in_training)) == sorted(names) and len(in_training) == len(names) * lightning_steps


def test_the_on_step_value_of_a_fused_step_is_the_mean_of_its_batches():
    class LogsIndex(BoringClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("index", float(batch_idx), on_step=True, on_epoch=False)
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    data = FedDM(tiny_dataset(40), num_workers=1, batch_size=1, seed=0)  # 40 batches: steps of 32 and 8
    fit = trainer(max_epochs=1, strategy=FederatedStrategy(local_loop="fused"))
    fit.fit(LogsIndex(4, 3), datamodule=data)
    assert fit.global_step == 2
    assert float(fit.callback_metrics["index"]) == pytest.approx(sum(range(32, 40)) / 8)  # the last step's batches


def test_logging_a_name_again_with_other_options_raises_lightnings_error():
    class Changes(BoringClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("flip", 1.0, prog_bar=batch_idx % 2 == 1)
            return super().training_step(batch, batch_idx)

    data = FedDM(tiny_dataset(16), num_workers=1, batch_size=4)
    fit = trainer(max_epochs=1, strategy=FederatedStrategy(local_loop="fused"))
    # Lightning's error, raised at the call that changed the options, as the worker's session reports errors
    with pytest.raises(WorkerError, match=r"MisconfigurationException: .*twice in `training_step` with different"):
        fit.fit(Changes(4, 3), datamodule=data)


def test_vectorized_chunks_log_once_a_name_a_lightning_step_with_the_sequential_epoch_mean(monkeypatch):
    sequential = _fit("steps", rounds=1)
    calls = lightning_log_calls(monkeypatch)
    vectorized = _fit("auto", rounds=1, vectorize=True)
    assert vectorized.strategy.backend.fused
    for key in ("train_loss_epoch", "x_mean_epoch", "x_max_epoch", "seen"):
        assert float(vectorized.callback_metrics[key]) == pytest.approx(
            float(sequential.callback_metrics[key]), abs=1e-5
        ), key
    assert calls.count("train_loss") == vectorized.global_step == 1  # 5 vectorized steps in one Lightning step


def test_unfused_vectorized_steps_log_once_a_name_a_step_with_the_sequential_epoch_mean(monkeypatch):
    sequential = _fit("steps", rounds=1)
    calls = lightning_log_calls(monkeypatch)
    vectorized = _fit("steps", rounds=1, vectorize=True)
    assert not vectorized.strategy.backend.fused
    for key in ("train_loss_epoch", "x_mean_epoch", "x_max_epoch", "seen"):
        assert float(vectorized.callback_metrics[key]) == pytest.approx(
            float(sequential.callback_metrics[key]), abs=1e-5
        ), key
    assert calls.count("train_loss") == vectorized.global_step == 5  # one a vectorized step, not one a worker
