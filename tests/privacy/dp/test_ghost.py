"""Ghost clipping (``DPConfig(grad_sample_mode="ghost")``): one DP-SGD step on the DP example's CNN equals Opacus'
``GradSampleModule`` + ``DPOptimizer`` step on the same batch and noise (the clipped sum and the new parameters, to
1e-6), with the same accountant history; the per-sample norms and clipped sums equal Opacus' on sequences, shared
layers, strides, dilations, frozen parameters and both loss reductions; the mode's choice and its errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fed.aggregation import FedAvg
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.models import DPMNISTCNN
from lightning_fed.privacy.dp import DPConfig, DPSGDAggregator
from lightning_fed.privacy.dp.functional import clip_and_sum_per_sample, per_sample_norms
from lightning_fed.privacy.dp.ghost import GhostClipper

pytest.importorskip("opacus")
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

Z, SEED, LR, SHARD = 1.1, 3, 0.5, 400
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),  # Opacus' hooks on a first layer: harmless
    pytest.mark.filterwarnings("ignore:.*the batches are not Poisson-sampled by DPSGDAggregator"),  # drawn here
]


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]


def cnn(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return DPMNISTCNN().to(device)


def batches(device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    drawn = [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (12, 9)]
    return [(x.to(device), y.to(device)) for x, y in drawn]


def opacus_steps(clip: float, expected: int, device: str = "cpu"):
    """Opacus' reference: its clipped sums (``p.summed_grad``) of the first step, parameters and accountant after all."""
    net = GradSampleModule(cnn(device))
    opt = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=LR),
        noise_multiplier=Z,
        max_grad_norm=clip,
        expected_batch_size=expected,
        generator=torch.Generator(device).manual_seed(SEED),
    )
    accountant = RDPAccountant()
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=expected / SHARD))
    summed = None
    for x, y in batches(device):
        F.nll_loss(net(x), y).backward()
        opt.step()
        summed = summed or [p.summed_grad.clone() for p in net.parameters()]
        opt.zero_grad()
    return summed, list(net._module.parameters()), accountant


def median_norm(device: str = "cpu") -> float:
    net, (x, y) = cnn(device), batches(device)[0]
    clipper = GhostClipper(net)
    F.nll_loss(net(x), y).backward()
    norms = clipper.per_sample_norms(list(net.parameters()))
    clipper.remove_hooks()
    return float(norms.median())


@pytest.mark.parametrize("device", DEVICES)
def test_one_dp_step_on_the_dp_cnn_equals_opacus_step_and_accounting(device, monkeypatch):
    # on a GPU: the same noise from a CUDA generator; full-precision convolutions (cuDNN's TF32 would differ by ~1e-3)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    clip, expected = median_norm(device), 10  # half the samples clipped, half not: the clip factors matter
    ref_summed, ref_params, ref_accountant = opacus_steps(clip, expected, device)

    net, (x, y) = cnn(device), batches(device)[0]  # our clipped sum of the first batch, from the ghost clipper
    clipper = GhostClipper(net)
    F.nll_loss(net(x), y).backward()
    params = list(net.parameters())
    norms = clipper.per_sample_norms(params)
    assert (norms > clip).any() and (norms < clip).any()
    summed = clipper.clipped_sum(params, clip)
    tol = 1e-6 if device == "cpu" else 1e-5  # the GPU's reductions run in another order
    assert all(torch.allclose(a, b, rtol=0, atol=tol) for a, b in zip(summed, ref_summed))
    # the test can fail: a clip norm 1% off moves the clipped sum far beyond the tolerance
    F.nll_loss(net(x), y).backward()
    perturbed = clipper.clipped_sum(params, clip * 1.01)
    assert max(float((a - b).abs().max()) for a, b in zip(perturbed, ref_summed)) > 1e-4
    clipper.remove_hooks()

    net = cnn(device)  # the aggregator's two steps on the unwrapped CNN, the same noise seed: Opacus' parameters
    dp = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=Z, max_grad_norm=clip, seed=SEED))
    dp.attach(net, {"w": SHARD}, batch_size=expected)
    assert dp.grad_sample_mode == "ghost" and dp.expected_batch_sizes["w"] == expected
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for x, y in batches(device):
        F.nll_loss(net(x), y).backward()
        dp.privatize_gradients("w", list(net.parameters()))
        opt.step()
        opt.zero_grad()
    assert all(torch.allclose(a, b, rtol=0, atol=tol) for a, b in zip(net.parameters(), ref_params))
    assert dp.accountants["w"].history == ref_accountant.history
    assert dp.epsilon("w") == ref_accountant.get_epsilon(delta=1e-5)
    dp.detach()


class Mixed(nn.Module):
    """Sequences (Gram and per-sample branches), a layer called twice, a strided dilated one-channel conv (grouped
    convolution) and a multi-channel one, strided, padded and dilated unequally in height and width (patches), a
    frozen bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1, dilation=2)
        self.conv2 = nn.Conv2d(3, 4, (2, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2), bias=False)  # patches
        self.short = nn.Linear(8, 8)  # on [n, 2, 8]: T^2 (in + out) < 2 in out, the Gram branch
        self.long = nn.Linear(4, 3)  # on [n, 6, 4]: per-sample gradients
        self.shared = nn.Linear(3, 3)
        self.short.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.tanh(self.conv(x))).flatten(1)[:, :4]
        s = self.short(seq).mean(1)[:, :4] + h
        t = self.long(torch.tanh(seq[:, :, :4].repeat(1, 3, 1))).mean(1)
        return self.shared(torch.tanh(self.shared(t))) + s[:, :3]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_norms_and_clipped_sums_equal_opacus_per_sample_gradients(reduction):
    g = torch.Generator().manual_seed(2)
    x, seq, y = torch.randn(5, 1, 9, 9, generator=g), torch.randn(5, 2, 8, generator=g), torch.randn(5, 3, generator=g)

    def loss(net: nn.Module) -> torch.Tensor:
        err = (net(x, seq) - y).pow(2).sum(1)
        return err.mean() if reduction == "mean" else err.sum()

    torch.manual_seed(0)
    ours = Mixed()
    theirs = GradSampleModule(Mixed(), loss_reduction=reduction)
    theirs.load_state_dict({f"_module.{k}": v for k, v in ours.state_dict().items()})
    theirs._module.short.bias.requires_grad_(False)
    params = [p for p in ours.parameters() if p.requires_grad]
    ref = [p for p in theirs.parameters() if p.requires_grad]
    clipper = GhostClipper(ours)
    loss(ours).backward()
    loss(theirs).backward()
    grad_samples = [p.grad_sample for p in ref]
    ref_norms = per_sample_norms(grad_samples)
    assert torch.allclose(clipper.per_sample_norms(params, reduction), ref_norms, rtol=1e-5, atol=0)
    clip = float(ref_norms.median())
    summed = clipper.clipped_sum(params, clip, reduction)
    expected = clip_and_sum_per_sample(grad_samples, clip, [p.dtype for p in ref])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(summed, expected))
    assert clipper.per_sample_norms(params).numel() == 0  # clipped_sum forgets the records


def test_inplace_activation_after_a_hooked_layer():
    """Opacus' full backward hooks refuse ``ReLU(inplace=True)`` after a layer; the ghost clipper's tensor hooks see
    the output gradient of the layer itself (compared with the same network without in-place)."""
    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    plain.load_state_dict(inplace.state_dict())
    x = torch.randn(7, 4)
    sums = []
    for net in (inplace, plain):
        clipper = GhostClipper(net)
        net(x).pow(2).sum().backward()
        sums.append(clipper.clipped_sum(list(net.parameters()), 0.5, "sum"))
    assert all(torch.equal(a, b) for a, b in zip(*sums))


def test_a_forward_without_backward_is_an_error_not_a_silent_zero():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    clipper = GhostClipper(net)
    net(torch.randn(4, 3))  # in training mode, with grad, never backpropagated
    net(torch.randn(4, 3)).sum().backward()
    with pytest.raises(
        LightningFedError, match=r"Linear ran 1 forward\(s\) .* under torch.no_grad\(\) or in eval mode"
    ):
        clipper.clipped_sum(list(net.parameters()), 1.0)
    clipper.reset()
    with torch.no_grad():
        net(torch.randn(4, 3))
    net(torch.randn(4, 3)).sum().backward()
    assert clipper.per_sample_norms(list(net.parameters())).shape == (4,)


def test_auto_mode_and_errors():
    linear = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    linear.attach(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), {"w": 10}, 2)
    assert linear.grad_sample_mode == "ghost"
    with_norm = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    auto = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0))
    auto.attach(with_norm, {"w": 10}, 2)
    assert auto.grad_sample_mode == "hooks"  # a layer the ghost clipper does not know: Opacus' per-sample gradients
    auto.detach()
    tied = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    tied[2].weight = tied[0].weight  # one parameter in two layers: its per-sample norm is not per layer
    auto.attach(tied, {"w": 10}, 2)
    assert auto.grad_sample_mode == "hooks"
    auto.detach()
    ghost = DPSGDAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0).replace(
        grad_sample_mode="ghost"
    ))  # fmt: skip
    with pytest.raises(FederatedConfigError, match=r"`grad_sample_mode='ghost'`.*has 1: LayerNorm.*'hooks'"):
        ghost.attach(with_norm, {"w": 10}, 2)
    with pytest.raises(
        FederatedConfigError,
        match=r"`grad_sample_mode='fast'` is not valid: choose one of \['auto', 'ghost', 'hooks'\]",
    ):
        DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="fast")
    with pytest.raises(
        FederatedConfigError, match=r"`grad_sample_mode='hooks'` is a sample-level option.*level='sample'"
    ):
        DPConfig(level="client", noise_multiplier=1.0, clip_norm=1.0, grad_sample_mode="hooks")
