"""The pure DP math: clipping bounds, the noise's standard deviation, adaptive clipping, the DP-SGD gradient."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_fed.privacy.dp import functional as dpf

#: Statistical tolerance on a standard deviation estimated from N = 1e5 draws: its relative standard error is
#: 1 / sqrt(2 (N - 1)) = 0.00224, so 1% is about 4.5 standard errors (a false failure has probability ~1e-5; with
#: the fixed seeds below the tests are deterministic), while a noise multiplier 5% off misses by ~5%.
N = 100_000
STD_TOLERANCE = 0.01


def std_matches(sample: torch.Tensor, expected_std: float) -> bool:
    sample = sample.double().reshape(-1)
    mean_ok = abs(float(sample.mean())) < 4.5 * expected_std / math.sqrt(sample.numel())
    return mean_ok and abs(float(sample.std()) / expected_std - 1.0) < STD_TOLERANCE


def test_clip_by_global_norm_bounds_the_flattened_update():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 0.5, 1.0, 3.0, 1e4):
        update = [torch.randn(5, 3, generator=g, dtype=torch.float64) * scale, torch.randn(7, generator=g) * scale]
        clipped, norm = dpf.clip_by_global_norm(update, clip_norm=1.0)
        assert norm == pytest.approx(math.sqrt(sum(float(t.double().pow(2).sum()) for t in update)))
        assert dpf.global_norm(clipped) <= 1.0
        if norm < 1.0 - 1e-5:  # small updates are left exactly as they are
            assert all(torch.equal(a, b) for a, b in zip(clipped, update))
        else:  # large ones keep their direction
            ratio = clipped[0] / update[0]
            assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))


def test_clip_excludes_tensors_from_the_norm_and_leaves_them():
    update = [torch.tensor([3.0, 4.0]), torch.tensor([100.0])]
    clipped, norm = dpf.clip_by_global_norm(update, clip_norm=1.0, include=[True, False])
    assert norm == 5.0 and clipped[1] is update[1]
    with pytest.raises(ValueError, match="one flag per tensor"):
        dpf.clip_by_global_norm(update, 1.0, include=[True])


def test_noise_std_is_z_times_c_and_a_wrong_z_fails_the_test():
    z, c = 1.3, 0.7
    g = torch.Generator().manual_seed(1)
    noisy = dpf.add_gaussian_noise([torch.zeros(N // 2, dtype=torch.float64), torch.zeros(N // 2)], z * c, g)
    sample = torch.cat([t.double() for t in noisy])
    assert std_matches(sample, z * c)
    assert not std_matches(sample, 1.05 * z * c)
    assert not std_matches(sample, 0.95 * z * c)
    assert noisy[1].dtype == torch.float32
    excluded = dpf.gaussian_noise_like([torch.zeros(3)], 1.0, g, include=[False])
    assert torch.equal(excluded[0], torch.zeros(3))


def test_adaptive_clip_norm_moves_towards_the_target_quantile():
    assert dpf.adaptive_clip_norm(1.0, 0.9, 0.5, 0.2) == pytest.approx(math.exp(-0.08))  # too few clipped: shrink
    assert dpf.adaptive_clip_norm(1.0, 0.1, 0.5, 0.2) == pytest.approx(math.exp(0.08))  # too many clipped: grow


def test_update_noise_multiplier_composes_to_z():
    z, sigma_b = 1.0, 5.0
    z_delta = dpf.update_noise_multiplier(z, sigma_b)
    assert z_delta > z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)  # the round's two Gaussians cost z together
    assert dpf.update_noise_multiplier(0.0, sigma_b) == 0.0
    with pytest.raises(ValueError, match="2 \\* clipped_count_stddev > noise_multiplier"):
        dpf.update_noise_multiplier(2.0, 0.5)


def test_capped_weight():
    assert dpf.capped_weight(5, 10) == 0.5 and dpf.capped_weight(50, 10) == 1.0


def test_dp_sgd_gradients_by_hand():
    # samples' gradients (one parameter of 2 coordinates, one of 1): norms 13 and 0.5
    a = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    b = torch.tensor([[12.0], [0.0]])
    got = dpf.dp_sgd_gradients([a, b], max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=4)
    f = 1.0 / (13.0 + dpf.CLIP_EPSILON)
    assert torch.allclose(got[0], (a[0] * f + a[1]) / 4) and torch.allclose(got[1], (b[0] * f) / 4)
    summed = dpf.dp_sgd_gradients(
        [a, b], max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=None, loss_reduction="sum"
    )
    assert torch.allclose(summed[0], a[0] * f + a[1])
    with pytest.raises(ValueError, match="expected_batch_size"):
        dpf.dp_sgd_gradients([a], max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=None)
    empty = dpf.dp_sgd_gradients([a[:0]], max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=4)
    assert torch.equal(empty[0], torch.zeros(2))
    assert dpf.flat_grad_sample([a, a]).shape == (4, 2)


def test_dp_sgd_noise_std_is_z_c_over_expected_batch_size():
    z, c, batch = 1.1, 2.0, 8
    grads = dpf.dp_sgd_gradients(
        [torch.zeros(batch, N)],
        max_grad_norm=c,
        noise_multiplier=z,
        expected_batch_size=batch,
        generator=torch.Generator().manual_seed(2),
    )
    assert std_matches(grads[0], z * c / batch)
    assert not std_matches(grads[0], 1.05 * z * c / batch)
