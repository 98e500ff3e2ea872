"""``FederatedStrategy(vectorize="auto")``: the faster path from a short measurement at the first round.

Oracles: "auto" trains exactly as the path it chose run explicitly; the measurement changes no training state; the
choice follows the timings (both directions, with the timings replaced).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_fed import FederatedStrategy
from lightning_fed.backends import SequentialBackend, VectorizedBackend
from lightning_fed.backends.vectorized import choose
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.strategies.options import check_process_options
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, max_abs_diff, tiny_dataset, trainer


def _model(seed: int = 0, **kw: Any) -> BoringClassifier:
    torch.manual_seed(seed)
    return BoringClassifier(4, 3, hidden=8, lr=0.05, **{"optimizer": "momentum", "dropout": 0.25, **kw})


def _fit(vectorize: Any, model: BoringClassifier | None = None, partition: str = "quantity_skew", **strategy_kw: Any):
    model = model if model is not None else _model()
    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, seed=3, partition=partition)
    fit = trainer(max_epochs=2, strategy=FederatedStrategy(vectorize=vectorize, seed=1, **strategy_kw))
    torch.manual_seed(7)  # dropout draws from here on: the measurement must not consume any of them
    fit.fit(model, datamodule=data)
    return model, fit


def _timings(monkeypatch: pytest.MonkeyPatch, sequential_s: float, vectorized_s: float) -> list[int]:
    """Replace the timer: each side "takes" the given seconds per worker step; returns the workers of each call."""
    calls: list[int] = []

    def time_both(module: Any, optimizer: Any, batch: Any, workers: list, *args: Any) -> tuple[float, float]:
        calls.append(len(workers))
        return sequential_s, vectorized_s

    monkeypatch.setattr(choose, "time_both", time_both)
    return calls


# -- the choice follows the measurement, and trains as the chosen path does ------------------------------------------
@pytest.mark.parametrize(("sequential_s", "vectorized_s", "vectorize"), [(2e-3, 1e-3, True), (1e-3, 2e-3, False)])
def test_auto_picks_the_faster_side_and_trains_as_that_path(monkeypatch, sequential_s, vectorized_s, vectorize):
    calls = _timings(monkeypatch, sequential_s, vectorized_s)
    auto, auto_fit = _fit("auto")
    choice = auto_fit.strategy.vectorize_choice
    assert calls == [4]  # measured once, for the whole run, with the round's 4 workers
    assert choice.vectorize is vectorize
    assert (choice.sequential_s, choice.vectorized_s, choice.workers) == (sequential_s, vectorized_s, 4)
    assert isinstance(auto_fit.strategy.backend, VectorizedBackend) is vectorize
    explicit, explicit_fit = _fit(vectorize)
    assert type(auto_fit.strategy.backend) is type(explicit_fit.strategy.backend)
    assert max_abs_diff(auto, explicit) < 1e-6
    assert auto_fit.global_step == explicit_fit.global_step
    assert max_abs_diff(auto, _model()) > 1e-3  # it trained


@pytest.mark.parametrize(("sequential_s", "vectorized_s", "vectorize"), [(2e-3, 1e-3, True), (1e-3, 2e-3, False)])
def test_a_fit_measures_once_and_keeps_its_choice_over_rounds(monkeypatch, sequential_s, vectorized_s, vectorize):
    calls = _timings(monkeypatch, sequential_s, vectorized_s)
    strategy = FederatedStrategy(vectorize="auto", seed=1, clients_per_round=2)  # unequal rounds: a loader a round
    data = FedDM(tiny_dataset(60), num_workers=4, batch_size=5, seed=3, partition="quantity_skew")
    fit = trainer(max_epochs=3, strategy=strategy)
    fit.fit(_model(), datamodule=data)
    assert fit.reload_dataloaders_every_n_epochs == 1  # the train loader reached the strategy every round
    assert calls == [2]
    assert isinstance(strategy.backend, VectorizedBackend) is vectorize and strategy.round_index == 3


def test_auto_with_a_real_measurement_equals_the_path_it_chose():
    auto, auto_fit = _fit("auto")
    choice = auto_fit.strategy.vectorize_choice
    assert choice.sequential_s > 0 and choice.vectorized_s > 0 and choice.measure_s > 0
    explicit, _ = _fit(choice.vectorize)
    assert max_abs_diff(auto, explicit) < 1e-6


# -- the measurement changes no training state -----------------------------------------------------------------------
class _Counting(BoringClassifier):
    """Counts its steps in a buffer (updated in place) and its Lightning ``log`` calls."""

    def __init__(self) -> None:
        super().__init__(4, 3, hidden=8, lr=0.05, optimizer="adam", dropout=0.25)
        self.register_buffer("seen", torch.zeros(()))
        self.real_logs = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.add_(1)
        return super().training_step(batch, batch_idx)

    def log(self, *args: Any, **kwargs: Any) -> None:
        self.real_logs += 1


def test_the_measurement_leaves_module_optimizer_and_rng_untouched():
    torch.manual_seed(0)
    module = _Counting()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    module.training_step(batch, 0).backward()
    optimizer.step()  # Adam now has state; the gradients stay set
    module.real_logs = 0
    params = {k: v.clone() for k, v in module.state_dict().items()}
    grads = [p.grad.clone() for p in module.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}
    rng = torch.get_rng_state()

    choice = choose.measure(module, optimizer, batch, workers=[_Worker(i) for i in range(3)], clip_val=0.5)

    assert choice.sequential_s > 0 and choice.vectorized_s > 0 and choice.workers == 3
    assert all(torch.equal(module.state_dict()[k], v) for k, v in params.items())  # the "seen" buffer too
    assert all(torch.equal(p.grad, g) for p, g in zip(module.parameters(), grads))
    after = optimizer.state_dict()["state"]
    assert all(torch.equal(after[k][n], t) for k, v in state.items() for n, t in v.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert module.real_logs == 0  # the measurement's self.log calls reach no Lightning logger


class _MetricInStep(BoringClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.val_acc(self(batch[0]), batch[1])  # a torchmetrics metric whose state updates in place
        return super().training_step(batch, batch_idx)


def test_a_metric_updated_in_training_step_means_sequential_and_is_left_untouched():
    module = _MetricInStep(4, 3)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    choice = choose.measure(module, optimizer, batch, workers=[_Worker(i) for i in range(2)])
    assert choice.vectorize is False and "metric 'val_acc'" in choice.reason
    assert module.val_acc.update_count == 0 and module.val_acc.tp.sum() == 0


class _Worker:
    def __init__(self, i: int) -> None:
        self.id = f"w{i}"


def test_the_timer_reads_the_clock_around_the_timed_steps_only_and_keeps_the_fastest(monkeypatch):
    # after the warm-ups (not timed), twice: two sequential steps, then one vectorized step of the 2 workers
    readings = iter([0, 3, 3, 4, 4, 14, 14, 16, 16, 21, 21, 27])  # seq 3, 1; vec 10; seq 2, 5; vec 6
    monkeypatch.setattr(choose, "clock", lambda: next(readings))
    module = _model()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    assert choose.time_both(module, optimizer, batch, [_Worker(0), _Worker(1)]) == (1, 3)  # vec: 6 s / 2 workers
    assert next(readings, None) is None


def test_decide_keeps_sequential_on_a_tie_and_on_a_lead_under_the_margin():
    assert choose.decide(1e-3, 1e-3, 4).vectorize is False
    assert choose.MARGIN == 1.1
    # a 1.005x lead is what one measurement showed for McMahan's CNN on a host where vectorized rounds took 1.33x
    assert choose.decide(5.78e-3, 5.75e-3, 10).vectorize is False
    assert choose.decide(1e-3, 0.95e-3, 4).vectorize is False  # 1.05x: under the margin
    assert choose.decide(1e-3, 0.9e-3, 4).vectorize is True  # 1.11x
    assert choose.decide(1e-3, 0.95e-3, 4, margin=1.0).vectorize is True


# -- where vectorizing cannot run, "auto" means sequential (no error, no measurement) --------------------------------
@pytest.mark.parametrize(
    ("strategy_kw", "model_kw", "reason"),
    [
        ({"mode": "follow"}, {}, "follow"),
        ({"tolerate_failures": True}, {}, "tolerate_failures"),
        ({}, {"batch_norm": True}, "BatchNorm1d"),
    ],
)
def test_auto_is_sequential_where_vectorizing_cannot_run(monkeypatch, strategy_kw, model_kw, reason):
    calls = _timings(monkeypatch, 1.0, 1e-9)  # vectorized would win, if it were measured
    _, fit = _fit("auto", model=_model(**model_kw), partition="iid", **strategy_kw)  # iid: BatchNorm needs 2 rows
    choice = fit.strategy.vectorize_choice
    assert choice.vectorize is False and reason in choice.reason
    assert calls == []
    assert not isinstance(fit.strategy.backend, VectorizedBackend)
    if "mode" not in strategy_kw:
        assert isinstance(fit.strategy.backend, SequentialBackend)


def test_auto_over_several_processes_is_accepted_true_is_refused():
    check_process_options("fedavg", "auto", "2 processes")
    with pytest.raises(FederatedConfigError, match=r"vectorize=True\) trains a round's workers together"):
        check_process_options("fedavg", True, "2 processes")


# -- bad values --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", 1, "Auto", None])
def test_bad_vectorize_values_name_the_value_and_the_choices(value):
    with pytest.raises(
        FederatedConfigError,
        match=rf"`vectorize={value!r}` is not valid: pass True or False, or 'auto' \(True: .*'auto': whichever",
    ):
        FederatedStrategy(vectorize=value)
