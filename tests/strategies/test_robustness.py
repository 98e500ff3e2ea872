"""Client failures (errors, dropout, stragglers) and Byzantine workers: each round's result equals the weighted mean
of the surviving workers' models, trained independently here in plain PyTorch."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from lightning_fed import FederatedConfigError, FederatedStrategy
from lightning_fed.aggregation import FedMedian, FedTrimmedAvg, Krum
from lightning_fed.rounds.byzantine import ByzantineWorkers
from lightning_fed.rounds.failures import ClientFailures, RoundFailedError, dropped_workers
from lightning_fed.testing import BoringClassifier
from lightning_fed.workers import current_worker
from tests.strategies.helpers import FedDM, tiny_dataset, trainer

LR = 0.1
BOOM = "GPU fell off the bus"


class FailsAt(BoringClassifier):
    """Raises in ``training_step`` at ``worker``'s ``at``-th batch (counting across the run)."""

    def __init__(self, worker: str = "", at: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.worker, self.at, self.calls = worker, at, 0

    def training_step(self, batch, batch_idx):
        if current_worker().id == self.worker:
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError(BOOM)
        return super().training_step(batch, batch_idx)


def _model(**kwargs) -> BoringClassifier:
    torch.manual_seed(0)
    return FailsAt(in_features=4, num_classes=3, hidden=8, lr=LR, optimizer="sgd", **kwargs)


def _local(start: torch.nn.Module, data, batches: list[list[int]]) -> dict[str, torch.Tensor]:
    """A worker's local round in plain PyTorch: SGD over its batches from the global model."""
    model = copy.deepcopy(start)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = data.tensors
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def _weighted_mean(models: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    return {k: sum(w * m[k] for m, w in zip(models, weights)) / sum(weights) for k in models[0]}


def _max_diff(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> float:
    return max((v.double() - expected[k]).abs().max().item() for k, v in model.state_dict().items())


def _survivors_mean(fed: FedDM, start: torch.nn.Module, cut: dict[str, int]) -> dict[str, torch.Tensor]:
    """The weighted mean of the workers in ``cut``, each trained on its first ``cut[w]`` batches of round 0."""
    sizes = {w.id: len(p) for w, p in zip(fed.workers, fed.fed.partition)}
    models, weights = [], []
    for w in fed.workers:
        if w.id in cut:
            models.append(_local(start, fed.dataset, fed.loader.batch_indices(w, epoch=0)[: cut[w.id]]))
            weights.append(sizes[w.id])
    return _weighted_mean(models, weights)


# -- (a) a worker raising mid-round ----------------------------------------------------------------------------------
def test_a_failing_worker_is_left_out_and_the_round_completes_with_the_others():
    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=0, partition="quantity_skew")  # 3, 3, 5, 3 batches
    model = _model(worker="w2", at=2)
    start = copy.deepcopy(model)
    strategy = FederatedStrategy(tolerate_failures=True)
    with pytest.warns(UserWarning, match=re.escape(f"Round 0: worker 'w2' failed at its local batch 2 (RuntimeError: {BOOM})")):  # fmt: skip
        trainer(max_epochs=1, strategy=strategy).fit(model, datamodule=fed)

    assert model.calls == 2  # w2's three remaining batches were skipped
    expected = _survivors_mean(fed, start, {"w0": 3, "w1": 3, "w3": 3})  # renormalized over the three survivors
    assert _max_diff(model, expected) < 1e-5
    summary = strategy.worker_summary()
    assert summary["w2"]["failed"] == 1 and summary["w2"]["steps"] == 2
    assert all(summary[w]["failed"] == 0 for w in ("w0", "w1", "w3"))
    assert strategy.round_index == 1


def test_too_few_survivors_stop_the_run_naming_round_survivors_and_min_clients():
    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=0, partition="quantity_skew")
    model = _model(worker="w2", at=2)
    start = copy.deepcopy(model)
    match = (
        r"Round 0 cannot be aggregated: 3 worker\(s\) delivered an update \(\['w0', 'w1', 'w3'\]\), fewer than "
        rf"min_clients=4\. Left out: 'w2' \(failed: RuntimeError: {BOOM}\)"
    )
    with pytest.warns(UserWarning, match="failed"), pytest.raises(RoundFailedError, match=match) as info:
        trainer(max_epochs=2, strategy=FederatedStrategy(min_clients=4, tolerate_failures=True)).fit(
            model, datamodule=fed
        )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert _max_diff(model, {k: v.double() for k, v in start.state_dict().items()}) == 0  # still the global model


# -- (b) dropout -------------------------------------------------------------------------------------------------------
def test_dropout_is_a_pure_function_of_seed_and_round_at_the_requested_rate():
    ids = [f"w{i}" for i in range(10)]
    assert dropped_workers(ids, 0.3, seed=1, round_index=4) == dropped_workers(ids, 0.3, seed=1, round_index=4)
    assert dropped_workers(ids, 0.0, seed=1, round_index=4) == set()
    rounds = [dropped_workers(ids, 0.3, seed=1, round_index=r) for r in range(500)]
    assert len({frozenset(r) for r in rounds}) > 100  # rounds differ
    assert abs(sum(map(len, rounds)) / (500 * 10) - 0.3) < 0.03


def _seed_dropping(count: int, rate: float, ids: list[str]) -> tuple[int, set]:
    seed = next(s for s in range(200) if len(dropped_workers(ids, rate, seed=s, round_index=0)) == count)
    return seed, dropped_workers(ids, rate, seed=seed, round_index=0)


def test_a_dropped_worker_is_skipped_and_the_others_are_averaged():
    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=0, partition="quantity_skew")
    ids = [w.id for w in fed.workers]
    seed, dropped = _seed_dropping(1, 0.3, ids)
    model = _model()
    start = copy.deepcopy(model)
    strategy = FederatedStrategy(dropout_rate=0.3, seed=seed)
    trainer(max_epochs=1, strategy=strategy).fit(model, datamodule=fed)

    survivors = {w.id: len(fed.loader.batch_indices(w, epoch=0)) for w in fed.workers if w.id not in dropped}
    assert _max_diff(model, _survivors_mean(fed, start, survivors)) < 1e-5
    summary = strategy.worker_summary()
    assert {w for w in ids if summary[w]["dropped"]} == dropped and all(summary[w]["steps"] == 0 for w in dropped)


def test_dropout_below_min_clients_fails_clearly():
    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=0, partition="quantity_skew")
    seed, dropped = _seed_dropping(2, 0.5, [w.id for w in fed.workers])
    first = sorted(dropped)[0]
    with pytest.raises(RoundFailedError, match=rf"fewer than min_clients=3\. Left out: .*'{first}' \(dropped out\)"):
        trainer(max_epochs=1, strategy=FederatedStrategy(dropout_rate=0.5, seed=seed, min_clients=3)).fit(
            _model(), datamodule=fed
        )


# -- stragglers ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["drop", "partial"])
def test_stragglers_stop_at_the_deadline_and_count_per_policy(policy):
    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=1, partition="quantity_skew")  # 4, 5, 3, 1 batches
    model = _model()
    start = copy.deepcopy(model)
    strategy = FederatedStrategy(deadline_steps=3, straggler_policy=policy)
    trainer(max_epochs=1, strategy=strategy).fit(model, datamodule=fed)

    on_time = {"w2": 3, "w3": 1}
    cut = on_time if policy == "drop" else {**on_time, "w0": 3, "w1": 3}  # FedProx counts the late partial work
    assert _max_diff(model, _survivors_mean(fed, start, cut)) < 1e-5
    summary = strategy.worker_summary()
    assert [summary[w]["late"] for w in ("w0", "w1", "w2", "w3")] == [1, 1, 0, 0]
    assert [summary[w]["steps"] for w in ("w0", "w1", "w2", "w3")] == [3, 3, 3, 1]


# -- Byzantine workers -----------------------------------------------------------------------------------------------
def test_robust_aggregators_resist_a_byzantine_worker_that_fedavg_does_not():
    fed = FedDM(tiny_dataset(60), num_workers=5, batch_size=4, seed=2)  # 12 samples each: equal weights
    start = _model()
    honest = [_local(start, fed.dataset, fed.loader.batch_indices(w, epoch=0)) for w in fed.workers[:4]]
    honest_mean = _weighted_mean(honest, [1, 1, 1, 1])
    spread = max(max((m[k] - honest_mean[k]).abs().max().item() for k in m) for m in honest)

    def distance(aggregation) -> float:
        model = copy.deepcopy(start)
        strategy = FederatedStrategy(aggregation=aggregation, byzantine={"w4": "scale:100"})
        trainer(max_epochs=1, strategy=strategy).fit(model, datamodule=fed)
        return _max_diff(model, honest_mean)

    for aggregation in (FedMedian(), FedTrimmedAvg(beta=0.2), Krum(num_byzantine=1)):
        assert distance(aggregation) <= spread + 1e-5, aggregation
    assert distance("fedavg") > 10 * spread


def test_byzantine_attacks_transform_updates():
    update = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)]
    reference = [torch.zeros(2), torch.tensor(0)]  # the second is an integer buffer: left alone
    byz = ByzantineWorkers({"a": "scale:100", "b": ("sign_flip", 2.0), "c": "sign_flip", "d": lambda u: [u[0] * 0]})
    assert [t.tolist() for t in byz("a", update, reference)] == [[100.0, -200.0], 3.0]
    assert [t.tolist() for t in byz("b", update, reference)] == [[-2.0, 4.0], 3.0]
    assert [t.tolist() for t in byz("c", update, reference)] == [[-1.0, 2.0], 3.0]
    assert [t.tolist() for t in byz("d", update, reference)] == [[0.0, -0.0]]
    assert byz("honest", update, reference) is update
    assert ByzantineWorkers.coerce(None) is None and ByzantineWorkers.coerce({}) is None
    assert ByzantineWorkers.coerce(byz) is byz


# -- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dropout_rate": 1.0}, r"`dropout_rate=1.0` is not valid: .* in \[0, 1\)"),
        ({"dropout_rate": -0.1}, r"`dropout_rate=-0.1`"),
        ({"deadline_steps": 0}, r"`deadline_steps=0` is not valid: pass an integer >= 1"),
        ({"straggler_policy": "wait"}, r"`straggler_policy='wait'` is not valid: choose 'drop' .* or 'partial'"),
        ({"min_clients": 0}, r"`min_clients=0` is not valid: pass an integer >= 1"),
        ({"byzantine": {"w1": "scale"}}, r"attack 'scale' for worker 'w1' needs a factor"),
        ({"byzantine": {"w1": "explode:3"}}, r"attack 'explode:3' for worker 'w1' is not valid"),
        ({"byzantine": {"w1": "scale:x"}}, r"attack 'scale:x' for worker 'w1' needs a finite number"),
        ({"byzantine": ["w1"]}, r"`byzantine=\['w1'\]` is not valid: pass a dict"),
        ({"mode": "follow", "dropout_rate": 0.1}, r"use them with mode='fedavg', not mode='follow'"),
    ],
)
def test_bad_robustness_arguments(kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedStrategy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_clients": 3, "clients_per_round": 2}, r"`min_clients=3` can never be met: rounds sample 2 workers"),
        ({"byzantine": {"w9": "sign_flip"}}, r"`byzantine` names workers the federation does not have: \['w9'\]"),
        ({"aggregation": Krum(num_byzantine=1)}, r"Krum\(num_byzantine=1, num_selected=1\) needs at least 5 updates"),
        ({"accumulate": 2, "local_steps": 4, "deadline_steps": 3}, r"accumulate_grad_batches=2.*deadline_steps=3"),
    ],
)
def test_impossible_robustness_configurations_fail_at_fit_start(kwargs, match):
    accumulate = kwargs.pop("accumulate", 1)
    fed = FedDM(tiny_dataset(16), num_workers=4, batch_size=2)
    with pytest.raises(FederatedConfigError, match=match):
        trainer(max_epochs=1, accumulate_grad_batches=accumulate, strategy=FederatedStrategy(**kwargs)).fit(
            _model(), datamodule=fed
        )


def test_failure_counts_survive_a_checkpoint():
    failures = ClientFailures(deadline_steps=1)
    failures.begin_round(0, ["a", "b"], ["a", "b"], seed=0)
    assert [failures.skip_batch("a"), failures.skip_batch("b"), failures.skip_batch("b")] == [False, False, True]
    with pytest.warns(UserWarning, match="worker 'a' failed at its local batch 1"):
        failures.record_failure("a", ValueError("x"))
    assert failures.finish("a") is False and failures.finish("b") is False  # failed; late under "drop"
    with pytest.raises(RoundFailedError, match=r"0 worker\(s\) delivered .*'b' \(missed the deadline of 1 steps\)"):
        failures.end_round()
    restored = ClientFailures()
    restored.load_state_dict(failures.state_dict())
    assert restored.counts("a") == {"failed": 1, "dropped": 0, "late": 0}
    assert restored.counts("b") == {"failed": 0, "dropped": 0, "late": 1}


def test_by_default_a_worker_error_stops_the_run_naming_the_worker():
    from lightning_fed import WorkerError

    fed = FedDM(tiny_dataset(48), num_workers=4, batch_size=4, seed=0, partition="quantity_skew")
    with pytest.raises(WorkerError, match=f"worker 'w2' failed to run plan.*RuntimeError: {BOOM}"):
        trainer(max_epochs=1, strategy=FederatedStrategy()).fit(_model(worker="w2", at=2), datamodule=fed)


class _Diverges(BoringClassifier):
    """Worker ``worker``'s loss turns NaN at its first batch of round ``at``: its model becomes NaN."""

    def __init__(self, worker: str, at: int = 0) -> None:
        super().__init__(num_classes=3)
        self.worker, self.at = worker, at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if current_worker().id == self.worker and self.current_epoch == self.at:
            loss = loss * float("nan")
        return loss


@pytest.mark.parametrize("secure", [False, True])
def test_a_non_finite_update_is_left_out_under_tolerate_failures(secure):
    fed = FedDM(tiny_dataset(48), num_workers=3, batch_size=8, seed=0)
    strategy = FederatedStrategy(tolerate_failures=True, secure_aggregation=secure)
    model = _Diverges("w1")
    with pytest.warns(UserWarning, match=r"worker 'w1' failed .*NonFiniteUpdateError.*not finite"):
        trainer(max_epochs=2, strategy=strategy).fit(model, datamodule=fed)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # the NaN never reached the global model
    assert strategy.round_index == 2 and strategy.worker_summary()["w1"]["failed"] == 1


def test_a_non_finite_update_stops_the_run_naming_the_worker_and_the_round():
    from lightning_fed.rounds import NonFiniteUpdateError

    fed = FedDM(tiny_dataset(48), num_workers=3, batch_size=8, seed=0)
    with pytest.raises(NonFiniteUpdateError, match=r"worker 'w2'.*not finite \(NaN or inf\).*round 1.*tolerate_fail"):
        trainer(max_epochs=2, strategy=FederatedStrategy()).fit(_Diverges("w2", at=1), datamodule=fed)
