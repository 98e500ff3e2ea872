"""Backward passes on shares equal torch autograd on the plain values; SGD on shared parameters equals plain SGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fed.smpc import share
from lightning_fed.smpc.nn import fix_precision_module, float_precision_module, get_module, share_module

ENC = {"base": 2, "precision_fractional": 16}


def _sh(x, workers, **kw):
    *holders, provider = workers
    return share(x, *holders, crypto_provider=provider, **ENC, **kw)


def _grad(t):
    return t.grad.get().float_precision()


@pytest.mark.parametrize("n_parties", [2, 3])
def test_mlp_gradients(workers, three, n_parties):
    workers = workers if n_parties == 2 else three
    x, w1, b1, w2 = torch.randn(5, 6), torch.randn(4, 6), torch.randn(4), torch.randn(3, 4)
    target = torch.randn(5, 3)
    sx = _sh(x, workers, requires_grad=True)
    s = [_sh(v, workers, requires_grad=True) for v in (w1, b1, w2)]
    loss = F.mse_loss(F.linear(F.relu(F.linear(sx, s[0], s[1])), s[2]), _sh(target, workers))
    loss.backward()
    p = [v.clone().requires_grad_() for v in (x, w1, b1, w2)]
    F.mse_loss(F.linear(F.relu(F.linear(p[0], p[1], p[2])), p[3]), target).backward()
    for shared, plain in zip([sx, *s], p):
        assert torch.allclose(_grad(shared), plain.grad, rtol=1e-2, atol=2e-3), (shared.shape, plain.grad)


def test_conv_pool_gradients(workers):
    x, w, b = torch.randn(2, 2, 10, 10), torch.randn(3, 2, 3, 3), torch.randn(3)
    sx, sw, sb = (_sh(v, workers, requires_grad=True) for v in (x, w, b))
    out = F.max_pool2d(F.relu(F.conv2d(sx, sw, sb)), 2)
    (out * out).mean().backward()
    p = [v.clone().requires_grad_() for v in (x, w, b)]
    ref = F.max_pool2d(F.relu(F.conv2d(*p)), 2)
    (ref * ref).mean().backward()
    for shared, plain in zip((sx, sw, sb), p):
        assert torch.allclose(_grad(shared), plain.grad, rtol=1e-2, atol=2e-3)


def test_gradients_accumulate_and_backward_twice_fails(workers):
    x = _sh(torch.tensor([1.0, 2.0]), workers, requires_grad=True)
    loss = (x * 3).sum()
    loss.backward()
    (x * 2).sum().backward()
    assert torch.allclose(x.grad.copy().get().float_precision(), torch.tensor([5.0, 5.0]))
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_no_grad_records_nothing(workers):
    x = _sh(torch.tensor([1.0, 2.0]), workers, requires_grad=True)
    with torch.no_grad():
        y = x * x
    assert y.grad_fn is None and not y.requires_grad


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.01)])
def test_sgd_on_shared_parameters_matches_plain_sgd(workers, momentum, weight_decay):
    bob, alice, james = workers
    plain = _Net()
    shared = _Net()
    shared.load_state_dict(plain.state_dict())
    share_module(fix_precision_module(shared, **ENC), bob, alice, crypto_provider=james, requires_grad=True)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt_s = torch.optim.SGD(shared.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for _step in range(3):
        x, y = torch.randn(4, 8), torch.randn(4, 3)
        opt_p.zero_grad()
        (((plain(x) - y) ** 2).sum() / 4).backward()
        opt_p.step()
        opt_s.zero_grad()
        loss = ((shared(_sh(x, workers, requires_grad=True)) - _sh(y, workers)) ** 2).sum().refresh() / 4
        loss.backward()
        opt_s.step()
    float_precision_module(get_module(shared))
    for a, b in zip(plain.parameters(), shared.parameters()):
        assert torch.allclose(a, b, atol=2e-3)
