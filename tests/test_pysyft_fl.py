"""PySyft 0.2's hand-written FL helpers (Part 02's ``Optims``; ``fl.utils``), each against plain PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.fl import Optims, accuracy, add_model, federated_avg, scale_model


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]]), torch.tensor([[0], [0], [1], [1.0]])


def test_optims_keeps_one_adam_state_per_worker_as_plain_pytorch_would() -> None:
    # Part 02: the model visits bob then alice each iteration; each worker steps its own Adam
    torch.manual_seed(0)
    data, target = toy_data()
    model = nn.Linear(2, 1)
    reference = copy.deepcopy(model)
    bob, alice = sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice")
    datasets = [
        (sy.send(data[:2], bob), sy.send(target[:2], bob)),
        (sy.send(data[2:], alice), sy.send(target[2:], alice)),
    ]
    optims = Optims(["bob", "alice"], optim=torch.optim.Adam(params=model.parameters(), lr=0.1))
    local = {"bob": torch.optim.Adam(reference.parameters(), lr=0.1),
             "alice": torch.optim.Adam(reference.parameters(), lr=0.1)}  # fmt: skip
    for _ in range(5):
        for (x, y), (lx, ly, name) in zip(datasets, [(data[:2], target[:2], "bob"), (data[2:], target[2:], "alice")]):
            sy.send(model, x.location)
            opt = optims.get_optim(x.location.id)
            opt.zero_grad()
            ((model(x) - y) ** 2).sum().backward()
            opt.step()
            sy.get(model)
            local[name].zero_grad()
            ((reference(lx) - ly) ** 2).sum().backward()
            local[name].step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert optims.get_optim("bob").state is not optims.get_optim("alice").state
    assert optims.get_optim(bob) is optims.get_optim("bob") and optims.count() == 2


def test_optims_copies_groups_and_state_of_the_template() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    template = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[1].parameters()}],
                               lr=0.1, momentum=0.9)  # fmt: skip
    model(torch.ones(1, 2)).sum().backward()
    template.step()  # a momentum buffer in the template's state
    optims = Optims([0, 1], template)
    one = optims.get_optim(1)
    assert [g["lr"] for g in one.param_groups] == [0.5, 0.1] and one.defaults["momentum"] == 0.9
    buffer = one.state[model[0].weight]["momentum_buffer"]
    assert torch.equal(buffer, template.state[model[0].weight]["momentum_buffer"])
    assert buffer is not template.state[model[0].weight]["momentum_buffer"]


@pytest.mark.parametrize(
    ("workers", "optim", "match"),
    [(["bob"], "sgd", r"`optim='sgd'` is not valid: pass an optimizer instance"),
     ("bob", None, r"`workers='bob'` is not valid: pass a non-empty list of worker ids"),
     ([], None, r"`workers=\[\]` is not valid"),
     (["bob", "bob"], None, r"names a worker twice")],
)  # fmt: skip
def test_optims_bad_arguments(workers, optim, match) -> None:
    optim = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1) if optim is None else optim
    with pytest.raises(FederatedConfigError, match=match):
        Optims(workers, optim)


def test_optims_unknown_worker_is_named() -> None:
    optims = Optims(["bob"], torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))
    with pytest.raises(KeyError, match=r"no optimizer for worker 'alice': Optims was built for \['bob'\]"):
        optims.get_optim("alice")


def test_federated_avg_is_the_mean_of_parameters_and_float_buffers() -> None:
    torch.manual_seed(0)
    models = {name: nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for name in ("bob", "alice", "carol")}
    for model in models.values():
        model(torch.randn(4, 3))  # running statistics differ per model
        model[1].num_batches_tracked += 1
    before = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
    avg = federated_avg(models)
    for name, value in avg.state_dict().items():
        stacked = torch.stack([before[k][name] for k in models])
        if value.is_floating_point():
            torch.testing.assert_close(value, stacked.double().mean(0).float(), rtol=0, atol=1e-7)
        else:
            assert torch.equal(value, before["bob"][name])
    assert all(torch.equal(models[k].state_dict()[n], before[k][n]) for k in models for n in before[k])  # untouched
    assert avg is not models["bob"]
    assert federated_avg(list(models.values())).state_dict().keys() == avg.state_dict().keys()


def test_federated_avg_refuses_remote_or_mismatched_models() -> None:
    bob = sy.VirtualWorker(id="bob")
    remote = sy.send(nn.Linear(2, 1), bob)
    with pytest.raises(FederatedConfigError, match=r"`models\['bob'\]` still holds pointers.*model.get\(\)"):
        federated_avg({"bob": remote})
    with pytest.raises(FederatedConfigError, match=r"`models\[1\]` does not have the same tensors as `models\[0\]`"):
        federated_avg([nn.Linear(2, 1), nn.Linear(3, 1)])
    with pytest.raises(FederatedConfigError, match=r"federated_avg\(\) got no models"):
        federated_avg({})


def test_add_and_scale_model_compose_to_the_mean() -> None:
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    expected = [(pa + pb) / 2 for pa, pb in zip(a.parameters(), b.parameters(), strict=True)]
    total = scale_model(add_model(copy.deepcopy(a), b), 0.5)
    for got, want in zip(total.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(FederatedConfigError, match=r"`scale='half'` is not valid: pass a number"):
        scale_model(a, "half")
    with pytest.raises(FederatedConfigError, match=r"do not have the same parameters"):
        add_model(a, nn.Linear(3, 1))


def test_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(scores, torch.tensor([1, 0, 0, 0])) == 0.75
    assert accuracy(scores, torch.tensor([[1], [0], [1], [0]])) == 1.0  # a column of targets, as PySyft took
    with pytest.raises(FederatedConfigError, match=r"do not fit: pass \(N, classes\) scores and N class indices"):
        accuracy(scores, torch.tensor([1, 0]))
