"""Each aggregator class against a formula computed by hand or in numpy; state round trips; errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lightning_fed import FederatedConfigError, FederatedStrategy, LightningFedError
from lightning_fed.aggregation import (
    AGGREGATORS,
    SCAFFOLD,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

X0 = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor(7)]  # a float tensor and an integer buffer (num_batches_tracked)
ROUNDS = [  # per round: (update, weight) per worker
    [
        ([torch.tensor([0.2, -0.4, 0.1]), torch.tensor(2.0)], 1.0),
        ([torch.tensor([-0.1, 0.3, 0.5]), torch.tensor(2.0)], 3.0),
    ],
    [
        ([torch.tensor([0.05, 0.1, -0.2]), torch.tensor(4.0)], 2.0),
        ([torch.tensor([0.3, -0.2, 0.0]), torch.tensor(2.0)], 2.0),
    ],
]


def _run(agg, rounds=ROUNDS, start=X0):
    x = [t.clone() for t in start]
    history = []
    for updates in rounds:
        agg.begin_round(x)
        for i, (update, weight) in enumerate(updates):
            agg.accumulate(update, weight=weight, worker_id=f"w{i}")
        x = agg.finalize(x)
        history.append(x)
    return history


def _np_mean(updates) -> tuple[np.ndarray, float]:
    total = sum(w for _, w in updates)
    return sum(w * u[0].double().numpy() for u, w in updates) / total, sum(w * float(u[1]) for u, w in updates) / total


def test_fedavgm_with_zero_momentum_is_fedavg_bit_for_bit():
    for got, expected in zip(_run(FedAvgM(server_lr=1.0, momentum=0.0)), _run(FedAvg())):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_fedavgm_momentum_follows_the_formula():
    lr, beta = 0.7, 0.5
    x, v = X0[0].double().numpy(), np.zeros(3)
    count = 7.0
    for got, updates in zip(_run(FedAvgM(server_lr=lr, momentum=beta)), ROUNDS):
        delta, count_delta = _np_mean(updates)
        v = beta * v + delta
        x = x + lr * v
        count = round(count + count_delta)
        np.testing.assert_allclose(got[0].numpy(), x.astype(np.float32), rtol=1e-6)
        assert got[1].dtype == torch.int64 and got[1].item() == count  # the integer buffer takes the weighted mean


@pytest.mark.parametrize("variant", ["adam", "yogi", "adagrad"])
def test_fedopt_server_steps_equal_reddi_algorithm_2_in_numpy(variant):
    lr, beta1, beta2, tau = 0.3, 0.8, 0.9, 1e-2
    agg = {
        "adam": FedAdam(server_lr=lr, beta1=beta1, beta2=beta2, tau=tau),
        "yogi": FedYogi(server_lr=lr, beta1=beta1, beta2=beta2, tau=tau, initial_accumulator=0.05),
        "adagrad": FedAdagrad(server_lr=lr, beta1=beta1, tau=tau),
    }[variant]
    x, m = X0[0].double().numpy(), np.zeros(3)
    v = np.full(3, 0.05 if variant == "yogi" else 0.0)
    count = 7.0
    for got, updates in zip(_run(agg), ROUNDS):
        delta, count_delta = _np_mean(updates)
        m = beta1 * m + (1 - beta1) * delta
        if variant == "adam":
            v = beta2 * v + (1 - beta2) * delta**2
        elif variant == "yogi":
            v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
        else:
            v = v + delta**2
        x = x + lr * m / (np.sqrt(v) + tau)
        count = round(count + count_delta)
        np.testing.assert_allclose(got[0].numpy(), x.astype(np.float32), rtol=1e-6)
        assert got[1].dtype == torch.int64 and got[1].item() == count


@pytest.mark.parametrize("make", [FedAdam, FedYogi, FedAdagrad, lambda: FedAvgM(server_lr=0.5)])
def test_server_optimizers_step_parameters_only_and_average_buffers(make):
    start = [torch.tensor([1.0, 2.0]), torch.tensor([0.5]), torch.tensor(3)]  # a parameter, a running stat, a count
    updates = [([torch.tensor([0.1, 0.2]), torch.tensor([-0.4]), torch.tensor(2.0)], 1.0),
               ([torch.tensor([0.3, 0.0]), torch.tensor([-0.1]), torch.tensor(6.0)], 3.0)]  # fmt: skip
    agg = make()
    agg.setup_model(num_params=1)
    param, running, count = _run(agg, [updates], start)[0]
    assert running.item() == pytest.approx(0.5 + (-0.4 * 1 - 0.1 * 3) / 4) and count.item() == 3 + (2 * 1 + 6 * 3) / 4
    assert not torch.allclose(param, torch.tensor([1.0 + 0.25, 2.0 + 0.05]))  # the parameter took a server step


def test_robust_aggregators_keep_integer_buffers_integer():
    for agg in (FedMedian(), FedTrimmedAvg(beta=0.2)):
        final = _run(agg)[-1]
        assert final[1].dtype == torch.int64 and final[1].item() == 7 + 2 + 3  # medians of (2, 2) then (4, 2)


def test_fedprox_adds_the_proximal_gradient_and_mu_zero_adds_nothing():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    frozen = torch.nn.Parameter(torch.tensor([5.0]))  # no grad: left alone
    w.grad = torch.tensor([0.1, 0.1])
    FedProx(mu=0.0).adjust_gradients("a", [w, frozen], [torch.zeros(2), torch.zeros(1)])
    assert torch.equal(w.grad, torch.tensor([0.1, 0.1]))
    FedProx(mu=0.5).adjust_gradients("a", [w, frozen], [torch.tensor([0.0, 4.0]), torch.zeros(1)])
    torch.testing.assert_close(w.grad, torch.tensor([0.1 + 0.5 * 1.0, 0.1 + 0.5 * -2.0]))
    assert frozen.grad is None


# -- SCAFFOLD on a tiny quadratic, by hand --------------------------------------------------------------------------
def test_scaffold_control_variates_follow_option_ii_on_a_quadratic():
    # f_i(x) = a_i / 2 * ||x - b_i||^2, grad = a_i (x - b_i); workers "a" and "b" of N = 3 take part
    a = {"a": 1.0, "b": 3.0}
    b = {"a": np.array([1.0, -2.0]), "b": np.array([-1.0, 0.5])}
    weights = {"a": 1.0, "b": 2.0}
    K, lr, N = 3, 0.1, 3

    agg = SCAFFOLD()
    agg.setup(["a", "b", "c"])
    x = [torch.tensor([0.5, 0.5], dtype=torch.float64)]
    # the reference, in numpy
    x_np, c_np, ci_np = np.array([0.5, 0.5]), np.zeros(2), {"a": np.zeros(2), "b": np.zeros(2)}

    for _ in range(2):  # round 1 (c = c_i = 0: plain local SGD), round 2 (corrected)
        agg.begin_round(x)
        new_ci, mean_update, total, raw_grads = {}, np.zeros(2), 0.0, {}
        for wid in ("a", "b"):
            # numpy: K corrected SGD steps
            y, grads = x_np.copy(), []
            for _ in range(K):
                g = a[wid] * (y - b[wid])
                grads.append(g)
                y = y - lr * (g + c_np - ci_np[wid])
            new_ci[wid] = ci_np[wid] - c_np + (x_np - y) / (K * lr)
            raw_grads[wid] = np.mean(grads, axis=0)
            mean_update += weights[wid] * (y - x_np)
            total += weights[wid]
            # the aggregator, driven as the strategy drives it
            agg.worker_start(wid, x)
            p = torch.nn.Parameter(x[0].clone())
            for _ in range(K):
                p.grad = a[wid] * (p.detach() - torch.from_numpy(b[wid]))
                agg.adjust_gradients(wid, [p], x)
                with torch.no_grad():
                    p -= lr * p.grad
            update = agg.worker_update(wid, [p.detach() - x[0]], num_steps=K, lr=lr)
            agg.accumulate(update, weight=weights[wid], worker_id=wid)
        x = agg.finalize(x)
        c_np = c_np + sum(new_ci[w] - ci_np[w] for w in ("a", "b")) / N  # c += |S|/N * mean(delta c_i)
        ci_np.update(new_ci)
        x_np = x_np + mean_update / total

        np.testing.assert_allclose(x[0].numpy(), x_np, rtol=1e-12)
        np.testing.assert_allclose(agg.server_control_variate[0].numpy(), c_np, rtol=1e-12)
        for wid in ("a", "b"):
            np.testing.assert_allclose(agg.control_variate(wid)[0].numpy(), ci_np[wid], rtol=1e-12)
            # option II's meaning: c_i+ is the mean of the worker's raw gradients along its local path
            np.testing.assert_allclose(ci_np[wid], raw_grads[wid], rtol=1e-10)
        assert agg.control_variate("c") is None  # not sampled: still zero


# -- checkpoints: state round-trips and resuming equals not stopping -------------------------------------------------
@pytest.mark.parametrize("make", [lambda: FedAvgM(0.5, 0.9), FedAdam, FedYogi, FedAdagrad, SCAFFOLD])
def test_server_state_round_trips_through_torch_save(make):
    def drive(agg, rounds):
        x = [t.clone() for t in X0]
        agg.setup(["w0", "w1"])
        for updates in rounds:
            agg.begin_round(x)
            for i, (update, weight) in enumerate(updates):
                param = torch.nn.Parameter(x[0].clone())
                param.grad = torch.ones(3)
                agg.worker_start(f"w{i}", x)
                agg.adjust_gradients(f"w{i}", [param], x[:1])
                update = agg.worker_update(f"w{i}", [u.double() for u in update], 2, 0.1)
                agg.accumulate(update, weight=weight, worker_id=f"w{i}")
            x = agg.finalize(x)
        return x

    straight = make()
    expected = drive(straight, ROUNDS + ROUNDS[:1])
    first = make()
    x = drive(first, ROUNDS)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert repr(resumed) == repr(first)
    resumed.setup(["w0", "w1"])
    resumed.begin_round(x)
    for i, (update, weight) in enumerate(ROUNDS[0]):
        param = torch.nn.Parameter(x[0].clone())
        param.grad = torch.ones(3)
        resumed.worker_start(f"w{i}", x)
        resumed.adjust_gradients(f"w{i}", [param], x[:1])
        resumed.accumulate(resumed.worker_update(f"w{i}", [u.double() for u in update], 2, 0.1), weight, f"w{i}")
    got = resumed.finalize(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


# -- registry and errors ---------------------------------------------------------------------------------------------
def test_registry_names_build_each_aggregator_and_instances_pass_through():
    expected = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi,
                "fedadagrad": FedAdagrad, "fedprox": FedProx, "scaffold": SCAFFOLD, "fedmedian": FedMedian,
                "fedtrimmedavg": FedTrimmedAvg, "krum": Krum}  # fmt: skip
    assert expected == AGGREGATORS
    for name, cls in expected.items():
        assert type(FederatedStrategy(aggregation=name.upper()).aggregator) is cls
        assert cls.is_sum is (cls not in (FedMedian, FedTrimmedAvg, Krum))
    mine = FedAdam(server_lr=0.01)
    assert FederatedStrategy(aggregation=mine).aggregator is mine


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FederatedStrategy(aggregation="fedmean"), r"aggregation='fedmean'.*fedadam"),
        (lambda: FedProx(mu=-0.1), r"FedProx `mu=-0.1` is not valid: pass a number >= 0"),
        (lambda: FedTrimmedAvg(beta=0.5), r"FedTrimmedAvg `beta=0.5` is not valid.*\[0, 0.5\)"),
        (lambda: FedTrimmedAvg(beta=-0.1), r"`beta=-0.1`"),
        (lambda: Krum(num_byzantine=-1), r"Krum `num_byzantine=-1` is not valid: pass an integer >= 0"),
        (lambda: Krum(num_selected=0), r"Krum `num_selected=0`"),
        (lambda: Krum(num_byzantine=1).check_num_clients(4), r"needs at least 5 updates per round .* got 4"),
        (lambda: Krum(num_byzantine=0, num_selected=4).check_num_clients(3), r"needs at least 4 updates"),
        (lambda: FedAvgM(momentum=1.0), r"FedAvgM `momentum=1.0` is not valid"),
        (lambda: FedAvgM(server_lr=0), r"FedAvgM `server_lr=0`"),
        (lambda: FedAdam(beta1=1.0), r"FedAdam `beta1=1.0` is not valid: pass a number in \[0.0, 1.0\)"),
        (lambda: FedYogi(beta2=-0.5), r"FedYogi `beta2=-0.5`"),
        (lambda: FedAdagrad(tau=0.0), r"FedAdagrad `tau=0.0` is not valid: pass a number in \(0.0, inf\)"),
        (lambda: FedAdam(server_lr=True), r"FedAdam `server_lr=True`"),
        (lambda: FedAdam(initial_accumulator=-1.0), r"`initial_accumulator=-1.0`"),
    ],
)
def test_bad_names_and_hyper_parameters(make, match):
    with pytest.raises(FederatedConfigError, match=match):
        make()


def test_krum_refuses_a_round_with_too_few_survivors():
    agg = Krum(num_byzantine=1)
    agg.begin_round([torch.zeros(1)])
    for i in range(4):
        agg.accumulate([torch.tensor([float(i)])], weight=1, worker_id=f"w{i}")
    with pytest.raises(FederatedConfigError, match=r"got 4 updates this round and needs at least 5.*min_clients=5"):
        agg.finalize([torch.zeros(1)])


@pytest.mark.parametrize("make", [FedAvg, FedMedian, SCAFFOLD])
def test_misuse_of_the_round_protocol(make):
    with pytest.raises(LightningFedError, match=r"accumulate\(\) before begin_round\(\)"):
        make().accumulate([torch.zeros(1)], weight=1, worker_id="a")
    agg = make()
    agg.begin_round([torch.zeros(1)])
    with pytest.raises(LightningFedError, match="no worker contributed"):
        agg.finalize([torch.zeros(1)])


def test_scaffold_needs_the_federation_size():
    agg = SCAFFOLD()
    agg.begin_round([torch.zeros(1)])
    agg.accumulate(agg.worker_update("a", [torch.ones(1)], 1, 0.1), weight=1, worker_id="a")
    with pytest.raises(LightningFedError, match=r"call setup\(worker_ids\)"):
        agg.finalize([torch.zeros(1)])
