"""The behaviours PySyft 0.2.9's tutorials Parts 09, 10, 11, 12 and 12 bis rely on, with ``import lightning_fed as
sy`` and the hook (our own small programs in those tutorials' style; no tutorial code is copied)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

import lightning_fed as sy
from lightning_fed.smpc import AdditiveSharingTensor


@pytest.fixture
def hook():
    with sy.TorchHook(torch) as h:
        yield h


def test_part09_integers_shared_among_three_and_two(hook):
    bob, alice, bill = (sy.VirtualWorker(hook, id=n) for n in ("bob", "alice", "bill"))
    x = torch.tensor([25]).share(bob, alice, bill)
    shares = [next(iter(w._objects.values())) for w in (bob, alice, bill)]
    assert all(s.dtype == torch.int64 for s in shares) and sum(shares) == 25
    assert x.get().tolist() == [25] and bob._objects == {}
    x, y = torch.tensor([25]).share(bob, alice), torch.tensor([5]).share(bob, alice)
    assert (x + y).get().tolist() == [30] and (x - y).get().tolist() == [20]
    provider = sy.VirtualWorker(hook, id="crypto_provider")
    x = torch.tensor([25]).share(bob, alice, crypto_provider=provider)
    y = torch.tensor([5]).share(bob, alice, crypto_provider=provider)
    assert (x * y).get().tolist() == [125]
    assert (x > y).get().tolist() == [1] and (x <= y).get().tolist() == [0]
    assert (x == y).get().tolist() == [0] and (x == y + 20).get().tolist() == [1]
    m = torch.tensor([[1, 2], [3, 4]]).share(bob, alice, crypto_provider=provider)
    eye2 = torch.tensor([[2, 0], [0, 2]]).share(bob, alice, crypto_provider=provider)
    assert m.mm(eye2).get().tolist() == [[2, 4], [6, 8]]
    assert torch.tensor([2, 3, 4, 1]).share(bob, alice, crypto_provider=provider).max().get().item() == 4
    v = torch.tensor([[2, 3], [4, 1]]).share(bob, alice, crypto_provider=provider)
    assert v.max(dim=0).get().tolist() == [4, 3]


def test_part10_workers_share_their_own_parameters_and_the_average_is_exact(hook):
    bob, alice, james = (sy.VirtualWorker(hook, id=n) for n in ("bob", "alice", "james"))
    models = [nn.Linear(3, 2), nn.Linear(3, 2)]
    for model, worker in zip(models, (bob, alice)):
        model.send(worker)
    params = [list(m.parameters()) for m in models]
    for i in range(2):
        shared = [params[k][i].fix_precision().share(bob, alice, crypto_provider=james).get() for k in range(2)]
        assert all(isinstance(s, AdditiveSharingTensor) for s in shared)
        new = (shared[0] + shared[1]).get().float_precision() / 2
        expected = (params[0][i].to_here() + params[1][i].to_here()) / 2
        assert torch.allclose(new, expected, atol=1e-3)


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 4)

    def forward(self, x):
        x = x.view(-1, 16)
        return self.fc2(F.relu(self.fc1(x)))


def test_part11_secure_classification_counts_correct_predictions(hook):
    _client, bob, alice, provider = (sy.VirtualWorker(hook, id=n) for n in ("client", "bob", "alice", "cp"))
    torch.manual_seed(0)
    model = _Classifier()
    data, target = torch.randn(20, 1, 4, 4), torch.randint(0, 4, (20,))
    with torch.no_grad():
        expected = int((model(data).argmax(1) == target).sum())
    model.fix_precision().share(alice, bob, crypto_provider=provider, protocol="fss")
    loader = [
        (d.fix_precision().share(alice, bob, crypto_provider=provider, protocol="fss"),
         t.fix_precision().share(alice, bob, crypto_provider=provider, protocol="fss"))
        for d, t in zip(data.split(10), target.split(10))
    ]  # fmt: skip
    n_correct_priv = 0
    with torch.no_grad():
        for d, t in loader:
            pred = model(d).argmax(dim=1)
            n_correct_priv += pred.eq(t.view_as(pred)).sum()
            n_correct = n_correct_priv.copy().get().float_precision().long().item()
    assert n_correct == expected


def test_part12_toy_training_loss_decreases(hook):
    alice, bob, james = (sy.VirtualWorker(id=n, hook=hook) for n in ("alice", "bob", "james"))
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]])
    target = torch.tensor([[0], [0], [1], [1.0]])
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    data = data.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    target = target.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    model = model.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    assert "AdditiveSharingTensor" in repr(data)
    opt = optim.SGD(params=model.parameters(), lr=0.1).fix_precision()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(data) - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.get().float_precision()))
    assert losses[-1] < 0.5 * losses[0]
    model.get().float_precision()
    assert isinstance(model[0].weight, nn.Parameter)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(28 * 28, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_part12bis_encrypted_training_and_test_loop(hook):
    workers = [sy.VirtualWorker(hook, id=f"worker{i + 1}") for i in range(2)]
    provider = sy.VirtualWorker(hook, id="crypto_provider")

    def secret_share(t):
        return t.fix_precision(precision_fractional=3).share(
            *workers, crypto_provider=provider, protocol="fss", requires_grad=True
        )

    torch.manual_seed(0)
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    train = [(secret_share(images[i : i + 8]), secret_share(F.one_hot(labels[i : i + 8], 10).float())) for i in (0, 8)]
    test = [(secret_share(images[:8]), secret_share(labels[:8].float()))]
    model = _Net().fix_precision().share(*workers, crypto_provider=provider, protocol="fss", requires_grad=True)
    optimizer = optim.SGD(model.parameters(), lr=0.02).fix_precision()
    for data, target in train:
        optimizer.zero_grad()
        output = model(data)
        batch_size = output.shape[0]
        loss = ((output - target) ** 2).sum().refresh() / batch_size
        loss.backward()
        optimizer.step()
        assert loss.get().float_precision().item() > 0
    correct = 0
    with torch.no_grad():
        for data, target in test:
            pred = model(data).argmax(dim=1)
            correct += pred.eq(target.view_as(pred)).sum()
    n = correct.get().float_precision().item()
    assert 0 <= n <= 8 and n == int(n)
    assert "crypto_provider" in repr(model.fc3.bias)
