"""What the workers hold: a single share is uniform (the plain value is not), and no store ever holds a plain value
of a shared tensor or model, during a whole training step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lightning_fed as sy
from lightning_fed.smpc import share
from lightning_fed.smpc.nn import fix_precision_module, share_module

# chi-square with 255 degrees of freedom: P(X > 400) < 1e-7, so a uniform share fails about once in 10^7 runs
_CRITICAL = 400.0


def _chi_square_bytes(words: torch.Tensor, shift: int) -> float:
    counts = torch.bincount(((words >> shift) & 0xFF).flatten(), minlength=256).double()
    expected = words.numel() / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_a_single_share_is_uniform_and_the_plain_value_is_not(workers):
    bob, alice, james = workers
    secret = torch.full((20_000,), 25.0)  # the worst case: one repeated value
    x = share(secret, bob, alice, crypto_provider=james)
    bobs = x.shares[0].to_here()
    for shift in (0, 24, 56):  # low, middle and top byte of the 64-bit share
        assert _chi_square_bytes(bobs, shift) < _CRITICAL
        assert _chi_square_bytes(x.encoding.encode(secret), shift) > _CRITICAL
    # after a product the fresh shares are uniform too
    y = x * x
    assert _chi_square_bytes(y.shares[1].to_here(), 56) < _CRITICAL


class _Recording(sy.VirtualWorker):
    """A worker that keeps a copy of every object that enters its store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Any] = []

    def _recv(self, message: Any) -> Any:
        before = set(self._store.objects)
        out = super()._recv(message)
        for key, value in self._store.objects.items():
            if key not in before:
                self.seen.append(value.clone() if isinstance(value, torch.Tensor) else value)
        return out


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def test_no_store_holds_a_plain_value_during_training():
    bob, alice, james = _Recording(id="bob"), _Recording(id="alice"), _Recording(id="james")
    torch.manual_seed(0)
    model = _Net()
    plain = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.randn(6, 12), torch.randn(6, 4)
    with torch.no_grad():
        hidden = model.fc1(x)
        out = model(x)
    enc = {"base": 2, "precision_fractional": 16}
    share_module(fix_precision_module(model, **enc), bob, alice, crypto_provider=james, requires_grad=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sx = share(x, bob, alice, crypto_provider=james, requires_grad=True, **enc)
    sy_ = share(y, bob, alice, crypto_provider=james, **enc)
    opt.zero_grad()
    loss = ((model(sx) - sy_) ** 2).sum() / 6
    loss.backward()
    opt.step()
    secrets = [x, y, hidden, F.relu(hidden), out, *plain.values()]
    encoded = [torch.round(s * 2**16).long() for s in secrets]
    assert james.seen == []  # the dealer stores nothing: it only sends
    stored = [t for w in (bob, alice) for t in w.seen]
    assert stored and all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in stored)
    for t in stored:
        for secret, code in zip(secrets, encoded):
            if t.shape == code.shape:
                # an encoding of the secret (within fixed-point rounding) would match most of its non-zero elements
                nonzero = code.abs() > 2
                assert float(((t - code).abs() <= 2)[nonzero].double().mean()) < 0.05
                assert not torch.allclose(t.double() / 2**16, secret.double(), atol=1e-2)
