"""Sample-level DP-SGD: our per-sample clipping and noise give Opacus' DPOptimizer's parameters, step for step, in a
plain torch loop (same model, batches and noise seed); per-worker accountants; budget stops; resume; errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fed.aggregation import FedAvg
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.privacy.dp import DPConfig, DPSGDAggregator, poisson_batch_positions
from lightning_fed.privacy.dp.functional import dp_sgd_gradients
from lightning_fed.privacy.dp.poisson import iter_poisson_positions

pytest.importorskip("opacus")
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

Z, C, BATCH, SHARD, SEED = 1.1, 0.5, 8, 64, 42
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),  # Opacus' hooks on a first layer: harmless
    pytest.mark.filterwarnings("ignore:.*the batches are not Poisson-sampled by DPSGDAggregator"),  # drawn here
]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(SHARD, 4, generator=g), torch.randint(0, 3, (SHARD,), generator=g)


def opacus_run(batches, accumulate: int = 1):
    net = GradSampleModule(model())
    opt = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.5),
        noise_multiplier=Z,
        max_grad_norm=C,
        expected_batch_size=BATCH,
        generator=torch.Generator().manual_seed(SEED),
    )
    accountant = RDPAccountant()
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=BATCH / SHARD))
    x, y = data()
    for i, idx in enumerate(batches):
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
    return net._module, accountant


def test_poisson_positions_are_opacus_uniform_with_replacement_sampler():
    ours = poisson_batch_positions(SHARD, BATCH / SHARD, 6, torch.Generator().manual_seed(3))
    sampler = UniformWithReplacementSampler(
        num_samples=SHARD, sample_rate=BATCH / SHARD, generator=torch.Generator().manual_seed(3), steps=6
    )
    assert ours == list(sampler)
    with pytest.raises(ValueError, match="num_samples > 0"):
        poisson_batch_positions(0, 0.1, 1)
    with pytest.raises(ValueError, match="num_samples > 0"):
        iter_poisson_positions(0, 0.1, 1)  # at the call, before any draw is asked for
    drawn = iter_poisson_positions(SHARD, BATCH / SHARD, 6, torch.Generator().manual_seed(3))
    assert [p.tolist() for p in drawn] == ours  # the same draws one at a time


def poisson_batches(count: int = 6):
    return poisson_batch_positions(SHARD, BATCH / SHARD, count, torch.Generator().manual_seed(5))


def test_functional_dp_sgd_in_a_plain_loop_equals_opacus_dpoptimizer():
    batches = poisson_batches()
    reference, _ = opacus_run(batches)
    net = GradSampleModule(model())  # only to get per-sample gradients; the step below is ours
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(SEED)
    x, y = data()
    for idx in batches:
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        params = list(net.parameters())
        grads = dp_sgd_gradients(
            [p.grad_sample for p in params],
            max_grad_norm=C,
            noise_multiplier=Z,
            expected_batch_size=BATCH,
            dtypes=[p.dtype for p in params],
            generator=generator,
        )
        for p, g in zip(params, grads):
            p.grad = g.view_as(p)
            p.grad_sample = None
        opt.step()
        opt.zero_grad()
    for ours, theirs in zip(net._module.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_dpsgd_aggregator_on_an_unwrapped_module_equals_opacus(accumulate, mode):
    batches = poisson_batches()
    reference, reference_accountant = opacus_run(batches, accumulate)
    net = model()  # the user's module, hooked in place: no wrapper
    config = DPConfig(level="sample", noise_multiplier=Z, max_grad_norm=C, seed=SEED, grad_sample_mode=mode)
    dp = DPSGDAggregator(FedAvg(), config)
    dp.attach(net, num_samples={"w": SHARD}, batch_size=BATCH)
    assert dp.grad_sample_mode == mode
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    global_params = [p.detach().clone() for p in net.parameters()]
    dp.worker_start("w", global_params)
    x, y = data()
    for i, idx in enumerate(batches):
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        if (i + 1) % accumulate == 0:
            dp.adjust_gradients("w", list(net.parameters()), global_params)  # the strategy's post_backward hook
            opt.step()
            opt.zero_grad()
    for ours, theirs in zip(net.parameters(), reference.parameters()):  # Opacus' own per-sample gradients: exact
        assert torch.equal(ours, theirs) if mode == "hooks" else torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert dp.accountants["w"].history == reference_accountant.history
    assert dp.epsilon("w") == reference_accountant.get_epsilon(delta=1e-5)
    assert dp.metrics()["dp/epsilon"] == dp.epsilon("w")
    dp.detach()
    F.cross_entropy(net(x[:4]), y[:4]).backward()
    assert all(not hasattr(p, "grad_sample") for p in net.parameters())


def test_budget_is_per_worker_and_an_exhausted_worker_stops_learning():
    net = model()
    dp = DPSGDAggregator(
        FedAvg(), DPConfig(level="sample", noise_multiplier=2.0, max_grad_norm=1.0, target_epsilon=3.0, seed=0)
    )
    dp.attach(net, num_samples={"small": 16, "large": 64}, batch_size=8)
    assert dp.sample_rates == {"small": 0.5, "large": 0.125}
    assert dp.expected_batch_sizes == {"small": 8, "large": 8}
    x, y = data()
    allowed = dp.remaining_steps("small")
    assert 0 < allowed < dp.remaining_steps("large")
    for _ in range(allowed):
        F.cross_entropy(net(x[:8]), y[:8]).backward()
        dp.adjust_gradients("small", list(net.parameters()), [])
        assert all(p.grad is not None for p in net.parameters())
    assert not dp.can_step("small") and dp.can_step("large") and not dp.should_stop
    assert (
        dp.epsilon("small") <= 3.0 < dp.accountants["small"].epsilon_after(1e-5, noise_multiplier=2.0, sample_rate=0.5)
    )
    F.cross_entropy(net(x[:8]), y[:8]).backward()
    dp.adjust_gradients("small", list(net.parameters()), [])
    assert all(p.grad is None for p in net.parameters()) and dp.accountants["small"].steps == allowed


def test_state_dict_round_trip_continues_epsilon_and_noise():
    def run(dp, net, steps):
        x, y = data()
        for i in range(steps):
            F.cross_entropy(net(x[i : i + 8]), y[i : i + 8]).backward()
            dp.adjust_gradients("w", list(net.parameters()), [])
        return [p.grad.clone() for p in net.parameters()]

    cfg = DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0, seed=7)
    straight, net = DPSGDAggregator(FedAvg(), cfg), model()
    straight.attach(net, {"w": SHARD}, BATCH)
    expected = run(straight, net, 5)
    first, net = DPSGDAggregator(FedAvg(), cfg), model()
    first.attach(net, {"w": SHARD}, BATCH)
    run(first, net, 3)
    resumed, net2 = DPSGDAggregator(FedAvg(), cfg.replace(seed=99)), model()
    resumed.attach(net2, {"w": SHARD}, BATCH)
    resumed.load_state_dict(first.state_dict())
    assert resumed.epsilon("w") == first.epsilon("w")
    x, y = data()
    for i in range(3, 5):  # the same last two steps, from the same weights
        F.cross_entropy(net2(x[i : i + 8]), y[i : i + 8]).backward()
        resumed.adjust_gradients("w", list(net2.parameters()), [])
    assert all(torch.equal(a, b) for a, b in zip((p.grad for p in net2.parameters()), expected))
    assert resumed.epsilon("w") == straight.epsilon("w")


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_target_epsilon_calibrates_each_workers_noise():
    cfg = DPConfig(level="sample", target_epsilon=4.0, num_rounds=2, max_grad_norm=1.0)
    dp = DPSGDAggregator(FedAvg(), cfg)
    dp.attach(model(), {"a": 16, "b": 64}, batch_size=8, steps_per_round={"a": 2, "b": 8})
    assert dp.noise_multipliers["a"] != dp.noise_multipliers["b"]
    for w, steps in (("a", 4), ("b", 16)):
        dp.accountants[w].step(
            noise_multiplier=dp.noise_multipliers[w], sample_rate=dp.sample_rates[w], num_steps=steps
        )
        assert 3.95 <= dp.epsilon(w) <= 4.0
    with pytest.raises(FederatedConfigError, match="unknown for worker 'c': pass steps_per_round"):
        dp.attach(model(), {"c": 10}, batch_size=8)


def test_errors():
    with pytest.raises(
        FederatedConfigError, match=r"DPSGDAggregator adds sample-level DP-SGD.*DPConfig\(level='sample'"
    ):
        DPSGDAggregator(FedAvg(), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    dp = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    with pytest.raises(LightningFedError, match="no per-sample gradients for worker 'w': call attach"):
        dp.adjust_gradients("w", [], [])
    with_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(FederatedConfigError, match="replace BatchNorm with GroupNorm"):
        dp.attach(with_bn, {"w": 10}, 2)


def test_an_empty_poisson_batch_still_steps_with_pure_noise():
    net = model()
    dp = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0, seed=0))
    dp.attach(net, {"w": SHARD}, BATCH)
    x, y = data()
    F.cross_entropy(net(x[:0]), y[:0]).backward()  # a NaN loss; the per-sample gradients are empty
    dp.adjust_gradients("w", list(net.parameters()), [])
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in net.parameters())
    assert dp.accountants["w"].history == [(1.0, BATCH / SHARD, 1)]
