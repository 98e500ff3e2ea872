"""The ``pfl`` contender of benchmarks/flower.py: Apple's pfl-research simulating the same FedAvg run.

pfl's own simulation, used as its documentation and benchmarks use it: ``FederatedAveraging().run(...)`` with a
``SimulatedBackend`` over a ``FederatedDataset``, a ``PyTorchModel`` (local optimizer ``torch.optim.SGD`` created by
pfl for every user, central optimizer ``torch.optim.SGD(lr=1.0)``: plain FedAvg, the global model plus the averaged
model difference), ``NNTrainHyperParams`` (the workload's lr, batch size and local epochs) and ``NNAlgorithmParams``
(the workload's rounds and cohort size, no validation cohort). The users' differences are weighted by their number of
samples (pfl's ``WeightByDatapoints``), as the other contenders' FedAvg does. pfl runs in this process, on the CPU,
with the driver's torch threads; its per-round metrics are not printed (``send_metrics_to_platform=False``).

The same as every contender:

* **initial weights**: ``data.init_state`` loaded into the model before pfl wraps it;
* **partitions**: user ``k`` is ``data.parts[k]`` of the same tensors;
* **client sampling**: pfl's ``FederatedDataset`` asks a *user sampler* (any ``callable() -> user_id``) for each user
  of a cohort, one after another; :class:`ScheduleSampler` hands out ``data.schedule`` in order, so round ``r`` trains
  exactly the clients of ``data.schedule[r]`` (checked after the run: pfl's uniform sampler is not used);
* **batches**: pfl's ``Dataset`` cuts a user's data into batches in its stored order and never shuffles, so the
  user dataset of (round ``r``, client ``k``) is built in the order every contender visits it in (``shuffled_order``:
  lightning_fed's loader's order): pfl, plain, Flower and lightning_fed train the very same batches.

Differences, all pfl's own behaviour, all inside its timed run: at its first iteration pfl always evaluates each
user's data before and after local training (``FederatedNNAlgorithm``: ``iteration % evaluation_frequency == 0``; the
frequency is set so that no later iteration does), so its first round costs more than the others (``round_s`` gives
every round's time, from a pfl callback); each user's dataset is made when the cohort is drawn (a slice of the shared
tensors, as the other contenders' data loaders also do per round).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # benchmarks.flower imports this module: no import cycle at run time
    from benchmarks.flower import Data, Workload


def pfl_available() -> str | None:
    """pfl's version, or None (with the reason printed) when pfl or its PyTorch path cannot be imported."""
    try:
        from importlib.metadata import version

        import pfl.model.pytorch  # noqa: F401
        from pfl.algorithm import FederatedAveraging  # noqa: F401
    except ImportError as err:
        print(f"note: the pfl contender is left out: {err} (make .venv-pfl with benchmarks/pfl_env.sh)")
        return None
    return version("pfl")


class PflModule(nn.Module):
    """A benchmark model with the two methods pfl's ``PyTorchModel`` calls: ``loss`` and ``metrics``.

    ``loss`` is the same NLL loss of the log-softmax output that the other contenders minimise.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.train()
        return F.nll_loss(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        from pfl.metrics import Weighted

        self.eval()
        out = self(x)
        return {"loss": Weighted(float(F.nll_loss(out, y, reduction="sum")), len(y)),
                "accuracy": Weighted(float((out.argmax(1) == y).sum()), len(y))}  # fmt: skip


class ScheduleSampler:
    """pfl's user sampler (``callable() -> user_id``) following a fixed schedule: the users ``(r, k)`` of round 0,
    then of round 1, ...; an error when asked for more than the schedule holds.

    >>> sampler = ScheduleSampler([[3, 1], [0, 2]])
    >>> [sampler() for _ in range(4)], sampler.handed_out
    ([(0, 3), (0, 1), (1, 0), (1, 2)], 4)
    """

    def __init__(self, schedule: list[list[int]]) -> None:
        self._users = [(r, k) for r, clients in enumerate(schedule) for k in clients]
        self.handed_out = 0

    def __call__(self) -> tuple[int, int]:
        if self.handed_out >= len(self._users):
            raise RuntimeError(f"pfl asked for user {self.handed_out + 1}, but the schedule has {len(self._users)}")
        self.handed_out += 1
        return self._users[self.handed_out - 1]


def run_pfl(w: Workload, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``w`` with pfl's FedAvg simulation; the same return value as the other contenders (see the module)."""
    os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")  # like the other contenders, even where CUDA is present
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    from benchmarks.flower import MODELS, shuffled_order

    made: list[tuple[int, int]] = []  # the (round, client) of each user dataset pfl asked for
    ends: list[float] = []  # perf_counter at the start, then at the end of every central iteration

    class RoundClock(TrainingProcessCallback):
        def on_train_begin(self, *, model: Any) -> Any:
            ends.append(time.perf_counter())
            return super().on_train_begin(model=model)

        def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> Any:
            ends.append(time.perf_counter())
            return super().after_central_iteration(aggregate_metrics, model, central_iteration=central_iteration)

    def make_user_dataset(user: tuple[int, int]) -> Dataset:
        r, k = user
        made.append(user)
        part = torch.as_tensor(data.parts[k])
        idx = part[shuffled_order(len(part), args.seed, r, k)]
        return Dataset((data.x[idx], data.y[idx]), user_id=f"{r}/{k}")

    start, cpu_start = time.perf_counter(), time.thread_time()
    net = MODELS[w.model]()
    net.load_state_dict(data.init_state)
    module = PflModule(net)
    model = PyTorchModel(module, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))  # fmt: skip
    sampler = ScheduleSampler(data.schedule)
    federated = FederatedDataset(make_user_dataset, sampler)
    backend = SimulatedBackend(training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()])
    algorithm_params = NNAlgorithmParams(central_num_iterations=w.rounds, evaluation_frequency=max(w.rounds, 1),
                                         train_cohort_size=w.clients_per_round, val_cohort_size=0)  # fmt: skip
    train_params = NNTrainHyperParams(local_num_epochs=w.local_epochs, local_learning_rate=w.lr,
                                      local_batch_size=w.batch_size)  # fmt: skip
    FederatedAveraging().run(algorithm_params=algorithm_params, backend=backend, model=model,
                             model_train_params=train_params, callbacks=[RoundClock()],
                             send_metrics_to_platform=False)  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    expected = [(r, k) for r, clients in enumerate(data.schedule) for k in clients]
    assert made == expected, "pfl trained other clients than the schedule"
    return {"wall_s": wall, "cpu_s": cpu, "round_s": [b - a for a, b in itertools.pairwise(ends)],
            "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}  # fmt: skip
