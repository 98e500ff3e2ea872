"""CrypTen's approximations on shares (exp, reciprocal, log, softmax) and the cross-entropy built on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc import UnsupportedOperationError, share
from lightning_fed.smpc.nn import fix_precision_module, share_module

ENC = {"base": 2, "precision_fractional": 16}


def _sh(x, workers, **kw):
    bob, alice, james = workers
    return share(x, bob, alice, crypto_provider=james, **ENC, **kw)


def _get(x):
    return x.get().float_precision()


def test_exp_reciprocal_log(workers):
    x = torch.linspace(-10, 2, 25)
    ref = torch.exp(x)
    assert bool(((_get(torch.exp(_sh(x, workers))) - ref).abs() <= ref * (x.square() / 2**9 + 1e-3) + 1e-3).all())
    v = torch.tensor([0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
    assert torch.allclose(_get(_sh(v, workers).reciprocal()), 1 / v, rtol=1e-3)
    assert torch.allclose(_get(torch.log(_sh(v, workers))), v.log(), atol=2.5e-2)


def test_softmax_rows(workers):
    x = torch.randn(5, 10) * 3
    assert torch.allclose(_get(F.softmax(_sh(x, workers), dim=1)), F.softmax(x, dim=1), atol=5e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("targets", ["one-hot shared", "indices public"])
def test_cross_entropy_value_and_gradient(workers, reduction, targets):
    x, y = torch.randn(6, 10) * 2, torch.randint(0, 10, (6,))
    sx = _sh(x, workers, requires_grad=True)
    target = _sh(F.one_hot(y, 10).float(), workers) if targets == "one-hot shared" else y
    loss = F.cross_entropy(sx, target, reduction=reduction)
    xt = x.clone().requires_grad_()
    ref = F.cross_entropy(xt, y, reduction=reduction)
    ref.backward()
    assert torch.allclose(_get(loss.copy()), ref.detach(), atol=3e-2 * (6 if reduction == "sum" else 1))
    loss.backward()
    assert torch.allclose(_get(sx.grad), xt.grad, atol=5e-3)


def test_training_with_cross_entropy_follows_plain_sgd(workers):
    bob, alice, james = workers
    # softmax regression: no ReLU, whose derivative may flip for a pre-activation within fixed-point error of 0
    plain, shared = nn.Linear(8, 4), nn.Linear(8, 4)
    shared.load_state_dict(plain.state_dict())
    share_module(fix_precision_module(shared, **ENC), bob, alice, crypto_provider=james, requires_grad=True)
    opt_p, opt_s = torch.optim.SGD(plain.parameters(), lr=0.5), torch.optim.SGD(shared.parameters(), lr=0.5)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    for _ in range(3):
        opt_p.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt_p.step()
        opt_s.zero_grad()
        F.cross_entropy(shared(_sh(x, workers)), _sh(F.one_hot(y, 4).float(), workers)).backward()
        opt_s.step()
    for a, b in zip(plain.parameters(), shared.parameters()):
        assert torch.allclose(a, _get(b.copy()), atol=2e-3)


def test_approximation_errors(workers):
    x = _sh(torch.randn(3, 4), workers, requires_grad=True)
    with pytest.raises(UnsupportedOperationError, match="exp of a shared tensor that requires grad"):
        torch.exp(x)
    with pytest.raises(FederatedConfigError, match="needs `dim=`"):
        F.softmax(x.detach())
    with pytest.raises(UnsupportedOperationError, match="reduction 'mean' or 'sum'"):
        F.cross_entropy(x, torch.tensor([0, 1, 2]), reduction="none")
    with pytest.raises(FederatedConfigError, match=r"target of shape \(2,\)"):
        F.cross_entropy(x, torch.tensor([0, 1]))
