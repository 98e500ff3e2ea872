"""A worker whose local training is abandoned (the fit raised while it trained) delivers nothing and leaves the
global model in the module (``Rounds.abandon_worker``); the module's plain tensor attributes come back too."""

from __future__ import annotations

import torch

from lightning_fed import VirtualWorker
from lightning_fed.aggregation import FedAvg
from lightning_fed.rounds import RoundPlan, Rounds


def test_an_abandoned_worker_delivers_nothing_and_the_module_holds_the_global_model():
    module = torch.nn.Linear(2, 1, bias=False)
    module.hidden = torch.zeros(1)  # a plain tensor attribute, as an LSTM's state
    with torch.no_grad():
        module.weight.fill_(1.0)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    rounds = Rounds(FedAvg())
    rounds.attach(list(module.parameters()), num_params=1, module=module)
    a, b = VirtualWorker(id="ab-a"), VirtualWorker(id="ab-b")
    rounds.add_workers({"ab-a": 1, "ab-b": 1})
    rounds.begin(RoundPlan(0, (a, b), (1, 1)), total_steps=2)

    rounds.start_worker(a, optimizers=[optimizer])
    module(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # a's momentum buffer and a changed weight
    module.hidden = torch.full((1,), 7.0)
    rounds.abandon_worker([optimizer])

    assert rounds.active is None and rounds.module_is_global
    assert torch.equal(module.weight.detach(), torch.ones(1, 2))
    assert torch.equal(module.hidden, torch.zeros(1))
    assert len(optimizer.state) == 0  # the optimizer holds no worker's state
    assert len(rounds.optimizer_states.get("ab-a")[0]) == 1  # a's own state stays a's

    rounds.start_worker(b, optimizers=[optimizer])
    with torch.no_grad():
        module.weight.fill_(3.0)
    rounds.finish_worker([optimizer])
    assert rounds.finalize()
    assert torch.equal(module.weight.detach(), torch.full((1, 2), 3.0))  # b's model alone: a delivered nothing


def test_abandoning_with_no_active_worker_changes_nothing():
    module = torch.nn.Linear(2, 1)
    rounds = Rounds(FedAvg())
    rounds.attach(list(module.parameters()), num_params=2, module=module)
    before = [t.detach().clone() for t in module.parameters()]
    rounds.abandon_worker([])
    assert rounds.active is None
    assert all(torch.equal(x, y.detach()) for x, y in zip(before, module.parameters()))
