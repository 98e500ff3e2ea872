"""``DPConfig(secure_mode=True)``: noise from the OS (ChaCha20 under ``os.urandom`` keys, Box-Muller), nothing of it in
the checkpoints, so the audit's attack (replay a checkpoint's noise generator, subtract the noise) fails; without
it the attack works, which is what the docs warn about."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fed.aggregation import FedAvg
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig, DPSGDAggregator
from lightning_fed.privacy.dp import functional as dpf
from lightning_fed.privacy.dp.noise import SECURE, secure_normal
from tests.privacy.dp.test_client_level import make, random_updates, run_round

pytest.importorskip("opacus")

#: Not seeded, so generous: N = 1e5 draws give the std a relative standard error of 0.22% and the mean one of
#: 0.32% of the std; 3% and 2% are > 6 standard errors (a false failure about 1e-9), a 5% wrong std still fails.
N = 100_000
STD_TOLERANCE = 0.03
MEAN_TOLERANCE = 0.02


def moments_match(sample: torch.Tensor, std: float) -> bool:
    sample = sample.double().reshape(-1)
    return abs(float(sample.mean())) < MEAN_TOLERANCE * std and abs(float(sample.std()) / std - 1) < STD_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_secure_noise_has_mean_zero_and_the_asked_std(dtype):
    noise = secure_normal((N,), 2.5, dtype)
    assert noise.dtype == dtype and noise.shape == (N,)
    assert moments_match(noise, 2.5) and not moments_match(noise, 2.5 * 1.05)
    assert abs(float((noise.abs() < 2.5 * 0.6745).double().mean()) - 0.5) < 0.01  # |x|'s median: the shape too
    (through_generic,) = dpf.gaussian_noise_like([torch.zeros(N, dtype=dtype)], 0.7, SECURE)
    assert moments_match(through_generic, 0.7)
    assert abs(sum(dpf.gaussian_scalar(1.0, SECURE) for _ in range(2000)) / 2000) < 0.15  # 6.7 standard errors


def test_two_secure_draws_differ():
    a, b = secure_normal((1000,), 1.0), secure_normal((1000,), 1.0)
    assert bool((a != b).all())
    torch.manual_seed(0)
    c = secure_normal((1000,), 1.0)
    torch.manual_seed(0)  # seed_everything does not reach it
    assert not torch.equal(c, secure_normal((1000,), 1.0))


def test_seed_with_secure_mode_is_refused_naming_both():
    with pytest.raises(FederatedConfigError, match=r"`seed=3` and `secure_mode=True` contradict.*Drop seed="):
        DPConfig(noise_multiplier=1.0, clip_norm=1.0, seed=3, secure_mode=True)
    with pytest.raises(FederatedConfigError, match=r"`secure_mode='yes'` is not valid: pass True"):
        DPConfig(noise_multiplier=1.0, clip_norm=1.0, secure_mode="yes")


@pytest.mark.parametrize("noise", ["server", "distributed"])
def test_client_level_state_dict_holds_no_noise_state_in_secure_mode(noise):
    agg = make(noise=noise, seed=None, secure_mode=True, adaptive_clipping=True, clipped_count_stddev=2.0)
    for r in range(2):
        run_round(agg, [torch.zeros(6), torch.zeros(2)], random_updates(r))
    assert agg.state_dict()["generator"] is None and agg._generator is None
    seeded = make(noise=noise)
    run_round(seeded, [torch.zeros(6), torch.zeros(2)], random_updates(0))
    assert seeded.state_dict()["generator"] is not None  # the default keeps it (exact resume), as documented


@pytest.mark.parametrize("noise", ["server", "distributed"])
def test_secure_mode_checkpoint_round_trip_keeps_the_accountant_and_epsilon(noise):
    cfg = dict(noise=noise, seed=None, secure_mode=True, noise_multiplier=0.8)
    global_tensors = [torch.zeros(6), torch.zeros(2)]
    straight = make(**cfg)
    outputs = [run_round(straight, global_tensors, random_updates(r))[0] for r in range(4)]
    first = make(**cfg)
    for r in range(2):
        run_round(first, global_tensors, random_updates(r))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(**cfg)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.accountant.history == first.accountant.history and resumed.epsilon() == first.epsilon()
    for r in range(2, 4):
        out, _ = run_round(resumed, global_tensors, random_updates(r))
        assert not torch.equal(out[0], outputs[r][0])  # fresh noise: not bit-identical
    assert resumed.accountant.history == straight.accountant.history and resumed.epsilon() == straight.epsilon()
    insecure = make(noise=noise)  # a seeded run's checkpoint: its generator state is not taken up in secure mode
    run_round(insecure, global_tensors, random_updates(0))
    resumed.load_state_dict(insecure.state_dict())
    assert resumed._generator is None


def replay_attack(agg, global_tensors, updates) -> float:
    """The audit's attack (dp_ckpt_noise.py) on server noise: from a saved state, regenerate the next round's noise
    and subtract it from the noisy sum; returns how far the result is from the true un-noised sum."""
    saved = agg.state_dict()  # what a checkpoint after the first round holds
    new, sent = run_round(agg, global_tensors, updates)
    noisy_sum = new[0].double() * len(updates)  # FedAvg divides the noisy sum by the contributions
    truth = sum(u[0] for u in sent.values())
    generator = torch.Generator()
    if saved["generator"] is not None:
        generator.set_state(saved["generator"])
    else:  # nothing saved: the attacker's next guess is seed_everything's seed
        generator.manual_seed(torch.initial_seed())
    shapes = [torch.zeros_like(u) for u in next(iter(sent.values()))]
    (noise, *_) = dpf.gaussian_noise_like(shapes, agg.noise_multiplier * agg.clip_norm, generator)
    return float((noisy_sum - noise - truth).abs().max())


@pytest.mark.parametrize("secure_mode", [False, True])
def test_replaying_the_checkpointed_noise_recovers_the_sum_only_without_secure_mode(secure_mode):
    torch.manual_seed(0)
    cfg = {"seed": None, "secure_mode": True} if secure_mode else {"seed": None}
    agg = make(noise_multiplier=1.0, clip_norm=1.0, **cfg)
    global_tensors = [torch.zeros(2000, dtype=torch.float64)]
    g = torch.Generator().manual_seed(7)
    run_round(agg, global_tensors, {f"w{i}": [torch.randn(2000, generator=g) * 0.01] for i in range(4)})
    error = replay_attack(agg, global_tensors, {f"w{i}": [torch.randn(2000, generator=g) * 0.01] for i in range(4)})
    if secure_mode:
        assert error > 2.0  # the noise (std 1 on 2000 coordinates) is still there
    else:
        assert error < 1e-9  # the noise-free sum of clipped updates: DP void for the checkpoint's reader


def test_sample_level_secure_mode_keeps_no_generator_state():
    def step(config):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 3))
        dp = DPSGDAggregator(FedAvg(), config)
        dp.attach(net, num_samples={"w": 20}, batch_size=5)
        dp.worker_start("w", [p.detach().clone() for p in net.parameters()])
        x, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])
        F.cross_entropy(net(x), y).backward()
        dp.privatize_gradients("w", list(net.parameters()))
        grads = [p.grad.clone() for p in net.parameters()]
        dp.detach()
        return dp, grads

    base = dict(level="sample", noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    secure, grads_a = step(DPConfig(**base, secure_mode=True))
    _, grads_b = step(DPConfig(**base, secure_mode=True))
    assert secure.state_dict()["generators"] == {} and secure.accountants["w"].steps == 1
    assert not torch.equal(grads_a[0], grads_b[0])  # fresh noise each time, whatever torch's seed
    seeded, _ = step(DPConfig(**base))
    assert list(seeded.state_dict()["generators"]) == ["cpu"]  # the default: the state is in the checkpoint
    seeded_state = seeded.state_dict()
    secure.load_state_dict(seeded_state)
    assert secure.state_dict()["generators"] == {}
    assert math.isfinite(secure.epsilon("w"))
