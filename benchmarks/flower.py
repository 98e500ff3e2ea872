"""lightning_fed against Flower's and pfl-research's simulations and a plain PyTorch loop, on the same FedAvg runs.

Workloads (flags change every size):

* **A**: the seed tutorial's two schools: real MNIST split IID in 2, the seed's CNN, batch 64, SGD lr 0.01, both
  clients every round, 1 local epoch, ``--a-rounds`` rounds.
* **B**: McMahan et al. 2017: 100 clients (600 MNIST images each by default: all 60,000; ``--samples-per-client 60``
  for 6,000), the 2NN (784-200-200-10), batch 10, SGD lr 0.05, 10 clients a round, 1 local epoch,
  ``--b-rounds`` rounds.
* **C**: pfl-research's cross-device benchmark shape: 1,000 clients of 50 MNIST images (50,000 of the 60,000),
  pfl's benchmark CNN (``PflCNN``), batch 10, SGD lr 0.1 (pfl's CIFAR-10 baseline's local lr), 50 clients a round,
  1 local epoch, ``--c-rounds`` rounds; ``--c-*`` flags for its sizes.

Contenders (``CONTENDERS``, name -> function; adding one is a function and a dict entry):

* ``flower``: ``flwr.simulation.run_simulation`` with the Ray backend (Flower's default) and Flower's default client
  resources; a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` (no federated evaluation) and a ``ClientApp``
  whose ``@app.train()`` function trains with a plain PyTorch loop, as Flower's PyTorch quickstart does. Left out,
  with a note, when ``flwr`` is not importable (the project's own venv: run this with ``.venv-flower/bin/python``,
  made by ``benchmarks/flower_env.sh``).
* ``pfl``: Apple's pfl-research, its own FedAvg simulation (``benchmarks/pfl_contender.py`` says how). Left out, with a
  note, when ``pfl`` is not importable (run this with ``.venv-pfl/bin/python``, made by ``benchmarks/pfl_env.sh``).
* ``lightning_fed``: ``pl.Trainer(strategy=FederatedStrategy(clients_per_round=...))`` on a ``FederatedDataModule``.
* ``plain``: a sequential PyTorch loop over the same clients and samples, FedAvg in a few lines (no framework).

All contenders start from the same initial weights, train on the same client partitions (lightning_fed's seeded
``iid`` split, handed to every contender), and follow the same client sampling schedule: lightning_fed's own
(``lightning_fed.rounds.planning.sample_clients``). Flower's server sends each round's messages to as many
simulated SuperNodes, and each message names the partition its client trains on (a ``partition-id`` in the
message's config instead of the node's ``node_config``), so Flower trains the very same clients each round; pfl
draws its cohorts from a user sampler that hands out the same schedule. Every contender also visits each client's
samples in the same order, lightning_fed's (``shuffle_generator`` seeds the others' shuffles as lightning_fed's loader
does; one local epoch), so all end with (nearly) the same weights where the model has no dropout (A, B; C's dropout
masks come from each process's own random stream); ``max |weight difference| ... vs plain`` says how near.

Timed: each contender's whole training call (model, data module and Trainer construction included; data loading
from disk and the test evaluation not). Flower's time is split into start-up (``run_simulation`` called -> first
client starts training: Ray start, actor start, first message), the rounds, and shut-down. Test accuracy: the final
global model on the 10,000 MNIST test images, evaluated the same way for every contender.

    .venv-flower/bin/python benchmarks/flower.py --data-root data    # A, B, C; all contenders but pfl
    PFL_VENV=.venv-flower bash benchmarks/pfl_env.sh                  # pfl there too: then all contenders
    .venv-flower/bin/python benchmarks/flower.py --data-root data --workloads B --samples-per-client 60
    .venv-pfl/bin/python benchmarks/flower.py --data-root data --workloads C --contenders pfl lightning_fed plain
    .venv/bin/python benchmarks/flower.py --smoke                                  # tiny synthetic sizes, no Flower
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    format_table,
    host_speed_text,
    interleaved,
    interval_text,
    machine_info,
    print_json_line,
    print_machine,
    ratios,
    summary,
    wait_until_quiet,
)
from benchmarks.pfl_contender import pfl_available, run_pfl

# Flower's ClientApp runs in Ray actor processes, which import this module (as ``benchmarks.flower``) to find the
# train function: so nothing here imports Lightning at module level (a Flower app's own code would not), and the
# clients' models are torch-only copies of lightning_fed.models' (``check_same_models`` compares them at start).


class SeedCNN(nn.Module):
    """Copy of ``lightning_fed.models.SeedCNN`` (checked equal at start-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 2)
        return F.log_softmax(self.fc(x.view(-1, 64 * 12 * 12)), dim=1)


class McMahan2NN(nn.Module):
    """Copy of ``lightning_fed.models.McMahan2NN`` (checked equal at start-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                                 nn.Linear(200, 10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=1)


class PflCNN(nn.Module):
    """pfl-research's benchmark CNN (``simple_cnn`` of its ``benchmarks/model/pytorch/cnn.py``, used for its CIFAR-10
    cross-device benchmark) for 28 x 28 x 1 inputs: 3x3 conv 32, ReLU, 3x3 conv 64, ReLU, 2x2 max-pool, dropout 0.25,
    FC 128, ReLU, dropout 0.5, FC 10, with Glorot-uniform weights (1,199,882 parameters). The seed's CNN plus the two
    dropouts and pfl's initialisation; a log-softmax output here, so that the NLL loss every contender uses is pfl's
    cross-entropy of the logits. Not in lightning_fed.models: lightning_fed trains it as ``MNISTClassifier.net``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(),
                                 nn.Dropout(0.5), nn.Linear(128, 10))  # fmt: skip
        for module in self.net:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=1)


MODELS: dict[str, type[nn.Module]] = {"seed_cnn": SeedCNN, "mcmahan_2nn": McMahan2NN, "pfl_cnn": PflCNN}
COPIES = ("seed_cnn", "mcmahan_2nn")  # the MODELS that copy lightning_fed.models' architectures


def check_same_models() -> None:
    """The copies above have lightning_fed's parameters and compute the same outputs from the same weights."""
    from lightning_fed import models

    for name in COPIES:
        copy = MODELS[name]
        ours = models._ARCHITECTURES[name]()
        mine = copy()
        theirs = ours.state_dict()
        assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in theirs.items()}, name
        mine.load_state_dict(theirs)
        x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(mine(x), ours(x)), f"{name}: the benchmark's copy differs from lightning_fed.models"


# -- workloads and data ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    name: str
    model: str
    clients: int
    samples_per_client: int | None  # None: all training images, split evenly
    clients_per_round: int
    batch_size: int
    lr: float
    local_epochs: int
    rounds: int


@dataclasses.dataclass
class Data:
    """One workload's data, the same for every contender."""

    x: torch.Tensor  # the training images used (normalised), N x 1 x 28 x 28
    y: torch.Tensor
    parts: list[list[int]]  # client k's samples: positions in x
    x_test: torch.Tensor
    y_test: torch.Tensor
    init_state: dict[str, torch.Tensor]  # the global model's initial weights
    schedule: list[list[int]]  # the clients of each round
    path: str  # x, y and parts saved for Flower's client processes
    source: str


def load_mnist(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real MNIST as normalised float tensors (what ToTensor + Normalize give), read offline from root/MNIST/raw."""
    from torchvision.datasets import MNIST

    from lightning_fed.datasets import MNIST_MEAN, MNIST_STD, MNISTDataModule

    MNISTDataModule(root).prepare_data()  # extracts the .gz files; downloads only missing ones
    out = []
    for train in (True, False):
        ds = MNIST(root, train=train, download=False)
        out += [((ds.data.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1).contiguous(), ds.targets.long()]
    return out[0], out[1], out[2], out[3]


def synthetic(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.randn(n_test, 1, 28, 28, generator=g), torch.randint(0, 10, (n_test,), generator=g))  # fmt: skip


def prepare(w: Workload, mnist: tuple[torch.Tensor, ...] | None, args: argparse.Namespace, tmp: str) -> Data:
    from lightning_fed.data.partition import iid
    from lightning_fed.rounds.planning import sample_clients

    if mnist is None:  # --smoke: synthetic MNIST-shaped tensors
        n = w.clients * (w.samples_per_client or 32)
        x_all, y_all, x_test, y_test = synthetic(n, 200, args.seed)
        source = "synthetic"
    else:
        x_all, y_all, x_test, y_test = mnist
        source = "MNIST"
    n = len(x_all) if w.samples_per_client is None else w.clients * w.samples_per_client
    if n > len(x_all):
        raise SystemExit(f"workload {w.name}: {w.clients} clients x {w.samples_per_client} > {len(x_all)} images")
    chosen = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(x_all))[:n]) if n < len(x_all) else None
    x, y = (x_all, y_all) if chosen is None else (x_all[chosen].contiguous(), y_all[chosen].contiguous())
    parts = iid(n, w.clients, seed=args.seed)
    torch.manual_seed(args.seed)
    init_state = {k: v.detach().clone() for k, v in MODELS[w.model]().state_dict().items()}
    schedule = [sample_clients(w.clients, w.clients_per_round, args.seed, r) for r in range(w.rounds)]
    path = os.path.join(tmp, f"workload_{w.name}.pt")
    torch.save({"x": x, "y": y, "parts": parts}, path)
    return Data(x, y, parts, x_test, y_test, init_state, schedule, path, source)


# -- the client's work, shared by Flower's ClientApp and the plain loop ------------------------------------------------
def shuffle_generator(seed: int, round_index: int, client: int) -> torch.Generator:
    """The generator of a client's shuffle in a round: seeded as lightning_fed's ``FederatedDataLoader`` seeds a
    worker's shuffle in an epoch (``mix_seed(seed, epoch, worker position)``, written out here so that Flower's actors
    need not import lightning_fed). With one local epoch, round ``r`` is the loader's epoch ``r`` and client ``k`` its
    worker ``k``."""
    mixed = np.random.SeedSequence([seed, round_index, client]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)
    return torch.Generator().manual_seed(int(mixed))


def shuffled_order(n: int, seed: int, round_index: int, client: int) -> torch.Tensor:
    """The order in which every contender visits a client's ``n`` samples in a round: lightning_fed's (its loader's
    ``torch.randperm`` from :func:`shuffle_generator`; tests/benchmarks checks it against the loader)."""
    return torch.randperm(n, generator=shuffle_generator(seed, round_index, client))


def local_train(model: nn.Module, dataset: TensorDataset, *, batch_size: int, lr: float, epochs: int,
                order: torch.Tensor) -> None:  # fmt: skip
    """Flower's PyTorch quickstart's ``train``: a DataLoader, SGD, the loss, backward, step (no momentum); the
    DataLoader visits the samples in ``order`` (:func:`shuffled_order`) instead of drawing its own shuffle (every
    workload here trains one local epoch)."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order.tolist())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            F.nll_loss(model(images), labels).backward()
            optimizer.step()


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean, in float32 and in the order Flower's ``aggregate_arrayrecords`` sums."""
    total = sum(weights)
    out: dict[str, torch.Tensor] = {}
    for state, weight in zip(states, weights, strict=True):
        factor = weight / total
        for key, value in state.items():
            if key in out:
                out[key] += value * factor
            else:
                out[key] = value * factor
    return out


# -- Flower's ClientApp side (runs in Ray actors) --------------------------------------------------------------------
_ACTOR_DATA: dict[str, Any] = {}  # per actor process: the workload file, and each partition's dataset


def _client_dataset(path: str, partition: int) -> TensorDataset:
    if _ACTOR_DATA.get("path") != path:
        _ACTOR_DATA.clear()
        _ACTOR_DATA.update(torch.load(path, mmap=True), path=path, datasets={})
    datasets = _ACTOR_DATA["datasets"]
    if partition not in datasets:
        idx = torch.as_tensor(_ACTOR_DATA["parts"][partition])
        datasets[partition] = TensorDataset(_ACTOR_DATA["x"][idx], _ACTOR_DATA["y"][idx])
    return datasets[partition]


def flower_train(msg: Any, context: Any) -> Any:
    """The ClientApp's ``@app.train()`` function: load the global weights, train locally, reply with the weights."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    t_start, cpu_start = time.time(), time.thread_time()
    config = msg.content["config"]
    torch.set_num_threads(int(config["threads"]))
    partition = int(config["partition-id"])
    dataset = _client_dataset(str(config["data-path"]), partition)
    t_data = time.time()
    model = MODELS[str(config["model"])]()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    order = shuffled_order(len(dataset), int(config["seed"]), int(config["server-round"]) - 1, partition)
    local_train(model, dataset, batch_size=int(config["batch-size"]), lr=float(config["lr"]),
                epochs=int(config["local-epochs"]), order=order)  # fmt: skip
    metrics = {"num-examples": len(dataset), "t-start": t_start, "t-end": time.time(), "load-s": t_data - t_start,
               "cpu-s": time.thread_time() - cpu_start, "torch-threads": torch.get_num_threads(),
               "pid": os.getpid()}  # fmt: skip
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def make_client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(flower_train)
    return app


def make_server_app(w: Workload, data: Data, seed: int, threads: int, out: dict[str, Any]) -> Any:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    class ScheduledFedAvg(FedAvg):
        """Flower's FedAvg, sending round r's messages to the partitions of ``data.schedule[r]``."""

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[Any]:
            partitions = data.schedule[server_round - 1]
            node_ids, _ = sample_nodes(grid, self.min_available_nodes, len(partitions))
            messages = []
            for node_id, partition in zip(node_ids, partitions, strict=True):
                record = RecordDict({"arrays": arrays, "config": ConfigRecord(
                    {**config, "server-round": server_round, "partition-id": partition})})  # fmt: skip
                messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node_id))
            return messages

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            for reply in replies:
                if reply.has_error():
                    out.setdefault("errors", []).append(reply.error.reason)
                else:
                    out["client_metrics"].append(dict(reply.content["metrics"]))
            return super().aggregate_train(server_round, replies)

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        out["t_server_start"] = time.time()
        strategy = ScheduledFedAvg(fraction_train=w.clients_per_round / w.clients, fraction_evaluate=0.0,
                                   min_train_nodes=1, min_available_nodes=w.clients)  # fmt: skip
        config = ConfigRecord({"lr": w.lr, "batch-size": w.batch_size, "local-epochs": w.local_epochs, "seed": seed,
                               "model": w.model, "data-path": data.path, "threads": threads})  # fmt: skip
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(data.init_state), num_rounds=w.rounds,
                                train_config=config)  # fmt: skip
        out["t_server_end"] = time.time()
        out["state"] = result.arrays.to_torch_state_dict()

    return app


def run_flower(w: Workload, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    out: dict[str, Any] = {"client_metrics": []}
    backend_config: dict[str, Any] = {}
    if args.flower_client_cpus is not None:
        backend_config["client_resources"] = {"num_cpus": args.flower_client_cpus, "num_gpus": 0.0}
    server_app = make_server_app(w, data, args.seed, torch.get_num_threads(), out)
    t0 = time.time()
    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=make_client_app(), num_supernodes=w.clients,
                   backend_config=backend_config or None)  # fmt: skip
    wall = time.perf_counter() - start
    t1 = time.time()
    if "state" not in out or out.get("errors"):
        raise RuntimeError(f"Flower's run failed: {out.get('errors')}")
    m = out["client_metrics"]
    first = min(c["t-start"] for c in m)
    return {
        "wall_s": wall,
        "state": {k: v.clone() for k, v in out["state"].items()},
        "startup_s": first - t0,  # run_simulation called -> the first client starts training
        "rounds_s": out["t_server_end"] - first,
        "shutdown_s": t1 - out["t_server_end"],
        "client_busy_s": sum(c["t-end"] - c["t-start"] for c in m),  # inside the ClientApp's train function
        "client_cpu_s": sum(c["cpu-s"] for c in m),  # CPU time of the thread running it (torch runs there too)
        "client_data_load_s": sum(c["load-s"] for c in m),
        # the first call in a fresh actor process pays torch's and Python's warm-up
        "client_first_call_s": min(m, key=lambda c: c["t-start"])["t-end"] - first,
        "client_first_call_cpu_s": min(m, key=lambda c: c["t-start"])["cpu-s"],
        "client_trainings": len(m),
        "actor_processes": len({c["pid"] for c in m}),
        "actor_torch_threads": sorted({int(c["torch-threads"]) for c in m}),
        "client_resources": backend_config.get("client_resources", "Flower's default (num_cpus=2, num_gpus=0)"),
    }


# -- lightning_fed -----------------------------------------------------------------------------------------------------
def run_lightning_fed(w: Workload, data: Data, args: argparse.Namespace, vectorize: bool | str = False,
                      local_loop: str = "auto", log_steps: bool = False, parallel_workers: int = 1,
                      ) -> dict[str, Any]:  # fmt: skip
    """``log_steps=False``: the module logs nothing per step, as the other contenders' loops record nothing
    (``MNISTClassifier``'s ``self.log("train_loss", on_step=True, on_epoch=True)`` is the ``log_steps=True`` run)."""
    import lightning.pytorch as pl

    from lightning_fed import FederatedDataModule, FederatedStrategy
    from lightning_fed.models import MNISTClassifier

    class Unlogged(MNISTClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.nll_loss(self(x), y)

    parts = data.parts

    def given_partition(num_samples: int, num_workers: int) -> list[list[int]]:
        return parts

    start, cpu_start = time.perf_counter(), time.thread_time()
    cls = MNISTClassifier if log_steps else Unlogged
    if w.model in COPIES:
        model = cls(architecture=w.model, lr=w.lr)
    else:  # a benchmark-only architecture (pfl's CNN): the same LightningModule around it
        model = cls(lr=w.lr)
        model.net = MODELS[w.model]()
    model.net.load_state_dict(data.init_state)
    datamodule = FederatedDataModule.from_datasets(
        TensorDataset(data.x, data.y), workers=w.clients, partition=given_partition, batch_size=w.batch_size,
        seed=args.seed,
    )  # fmt: skip
    strategy = FederatedStrategy(clients_per_round=w.clients_per_round, local_epochs=w.local_epochs, seed=args.seed,
                                 vectorize=vectorize, local_loop=local_loop,
                                 parallel_workers=parallel_workers)  # fmt: skip
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_epochs=w.rounds, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    planned = [[int(wk.id.removeprefix("worker_")) for wk in strategy.round_plan(r).workers] for r in range(w.rounds)]
    assert planned == data.schedule, "lightning_fed sampled other clients than the schedule"
    out = {"wall_s": wall, "cpu_s": cpu, "state": {k: v.detach().clone() for k, v in model.net.state_dict().items()}}
    if strategy.vectorize_choice is not None:  # vectorize="auto": what it measured and chose
        out["vectorize_choice"] = str(strategy.vectorize_choice)
    out["threads"] = strategy.threads.describe()  # num_threads="auto": the torch threads it gave each round
    return out


# -- plain PyTorch -----------------------------------------------------------------------------------------------------
def run_plain(w: Workload, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    datasets = [TensorDataset(data.x[torch.as_tensor(p)], data.y[torch.as_tensor(p)]) for p in data.parts]
    start, cpu_start = time.perf_counter(), time.thread_time()
    model = MODELS[w.model]()
    state = data.init_state
    for r, clients in enumerate(data.schedule):
        states, weights = [], []
        for k in clients:
            model.load_state_dict(state)
            local_train(model, datasets[k], batch_size=w.batch_size, lr=w.lr, epochs=w.local_epochs,
                        order=shuffled_order(len(datasets[k]), args.seed, r, k))  # fmt: skip
            states.append({key: v.detach().clone() for key, v in model.state_dict().items()})
            weights.append(len(datasets[k]))
        state = fedavg(states, weights)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.thread_time() - cpu_start, "state": state}


# name -> function(workload, data, args) returning {"wall_s": seconds, "state": final global state_dict, ...}
CONTENDERS: dict[str, Callable[[Workload, Data, argparse.Namespace], dict[str, Any]]] = {
    "flower": run_flower,
    "pfl": run_pfl,
    "lightning_fed": run_lightning_fed,
    "lightning_fed_vectorized": lambda w, data, args: run_lightning_fed(w, data, args, vectorize=True),
    # vectorize="auto": a short measurement at the first round picks the faster path (its cost is in the time)
    "lightning_fed_auto": lambda w, data, args: run_lightning_fed(w, data, args, vectorize="auto"),
    # two workers at once, one thread each (parallel_workers=2; cpu_s then counts the main thread's time only)
    "lightning_fed_threads": lambda w, data, args: run_lightning_fed(w, data, args, parallel_workers=2),
    # the sequential path with one Lightning step per batch (local_loop="steps"), and with per-step logging
    "lightning_fed_steps": lambda w, data, args: run_lightning_fed(w, data, args, local_loop="steps"),
    "lightning_fed_logged": lambda w, data, args: run_lightning_fed(w, data, args, log_steps=True),
    "lightning_fed_vectorized_logged": lambda w, data, args: run_lightning_fed(
        w, data, args, vectorize=True, log_steps=True
    ),
    "plain": run_plain,
}
RATIOS = [("flower", "lightning_fed"), ("pfl", "lightning_fed"), ("lightning_fed", "plain"), ("flower", "plain"),
          ("pfl", "plain"), ("flower", "pfl"), ("flower", "lightning_fed_vectorized"),
          ("pfl", "lightning_fed_vectorized"), ("lightning_fed_vectorized", "plain"), ("lightning_fed_steps", "plain"),
          ("lightning_fed_logged", "plain"), ("flower", "lightning_fed_auto"),
          ("pfl", "lightning_fed_auto"), ("pfl", "lightning_fed_threads"), ("flower", "lightning_fed_threads"),
          ("lightning_fed", "lightning_fed_threads"),
          ("lightning_fed_vectorized_logged", "lightning_fed_vectorized")]  # fmt: skip


@torch.no_grad()
def test_accuracy(model_name: str, state: dict[str, torch.Tensor], data: Data) -> float:
    model = MODELS[model_name]()
    model.load_state_dict(state)
    model.eval()
    batches = zip(data.x_test.split(1000), data.y_test.split(1000), strict=True)
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return correct / len(data.y_test)


def run_workload(w: Workload, data: Data, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    extras: dict[str, list[dict[str, Any]]] = {name: [] for name in names}

    def timed(name: str) -> Callable[[], float]:
        def call() -> float:
            waited = wait_until_quiet()  # the previous contender's processes (Ray's) have wound down
            print(f"# workload {w.name}: running {name} (after {waited:.1f} s waiting for a quiet machine)", flush=True)
            result = CONTENDERS[name](w, data, args)
            result["test_acc"] = test_accuracy(w.model, result["state"], data)
            extras[name].append(result)
            threads = f"; {result['threads']}" if "threads" in result else ""
            print(f"# workload {w.name}: {name} took {result['wall_s']:.2f} s, test accuracy {result['test_acc']}"
                  f"{threads}", flush=True)  # fmt: skip
            return result["wall_s"]

        return call

    walls = interleaved({name: timed(name) for name in names}, args.repeats)
    states = {name: [run.pop("state") for run in extras[name]][-1] for name in names}
    if args.profile:
        profile(w, data, [name for name in names if name != "flower"], args)
    results = {}
    for name in names:
        runs = extras[name]
        results[name] = {"wall_s": summary(walls[name])["median"], "wall_s_all": walls[name],
                         "test_acc": runs[-1]["test_acc"], "test_acc_all": [r["test_acc"] for r in runs]}  # fmt: skip
        results[name].update({k: v for k, v in runs[-1].items() if k not in ("wall_s", "test_acc")})
        if "threads" in runs[-1]:  # per repeat: a repeat that ran at fewer threads explains a slow wall time
            results[name]["threads_all"] = [r["threads"] for r in runs]
        if name == "flower":  # the same, without Ray's and the actors' start-up
            results[name]["after_startup_s_all"] = [r["wall_s"] - r["startup_s"] for r in runs]
    for name in names:  # same clients, batches and sums as plain: the weights should agree (dropout aside)
        if name != "plain" and "plain" in names:
            diff = max(float((states[name][k] - v).abs().max()) for k, v in states["plain"].items())
            results[name]["max_abs_diff_vs_plain"] = f"{diff:.2g}"  # a string: the JSON line rounds floats
    out: dict[str, Any] = {"workload": dataclasses.asdict(w), "data": data.source, "train_samples": len(data.x),
                           "schedule": data.schedule, "results": results, "ratios": {}}  # fmt: skip
    for num, den in RATIOS:
        if num in walls and den in walls:
            out["ratios"][f"{num}/{den}"] = ratios(walls[num], walls[den])
    out["ratios"].update(after_startup_ratios(results, walls))
    return out


def after_startup_ratios(results: dict[str, Any], walls: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Flower's time without its start-up (Ray's and the actors'), repeat by repeat, over each lightning_fed
    contender's: a quotient that a slow hour moves less, since it sets arithmetic against arithmetic.

    Example:
        >>> r = after_startup_ratios({"flower": {"after_startup_s_all": [6.0, 9.0]}},
        ...                          {"flower": [10.0, 13.0], "lightning_fed_auto": [2.0, 3.0], "plain": [4.0, 4.0]})
        >>> list(r), r["flower_after_startup/lightning_fed_auto"]["median"]
        (['flower_after_startup/lightning_fed_auto'], 3.0)
    """
    if "flower" not in results:
        return {}
    rounds = results["flower"]["after_startup_s_all"]
    return {f"flower_after_startup/{name}": ratios(rounds, wall)
            for name, wall in walls.items() if name.startswith("lightning_fed")}  # fmt: skip


def profile(w: Workload, data: Data, names: list[str], args: argparse.Namespace) -> None:
    """One more, untimed run of each contender under cProfile; print its top ``args.profile`` rows (cumulative).

    Flower is left out: its clients train in Ray's actor processes, which this process's profiler does not see.
    """
    import cProfile
    import io
    import pstats

    for name in names:
        profiler = cProfile.Profile()
        profiler.enable()
        CONTENDERS[name](w, data, args)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(f"\n# workload {w.name}: cProfile of {name} (one extra run, not timed)\n{out.getvalue()}")


def print_workload(record: dict[str, Any]) -> None:
    w, res = record["workload"], record["results"]
    spc = f"{w['samples_per_client']} images" if w["samples_per_client"] else "an even share"
    print(f"\n## workload {w['name']}: {w['model']}, {w['clients']} clients x {spc} ({record['train_samples']} "
          f"{record['data']} training images), {w['clients_per_round']} a round, batch {w['batch_size']}, "
          f"lr {w['lr']}, {w['local_epochs']} local epoch(s), {w['rounds']} rounds")  # fmt: skip
    rows = []
    for name, r in res.items():
        detail = f"training thread's CPU time {r['cpu_s']:.2f} s" if "cpu_s" in r else ""
        if name == "pfl" and len(r["round_s"]) > 1:
            detail += (f"; first round {r['round_s'][0]:.2f} s (with pfl's evaluation of every user), later rounds "
                       f"{statistics.median(r['round_s'][1:]):.2f} s (median)")  # fmt: skip
        if name == "flower":
            detail = (f"start-up {r['startup_s']:.1f} s, rounds {r['rounds_s']:.1f} s (in the clients' train "
                      f"function {r['client_busy_s']:.1f} s, {r['client_cpu_s']:.1f} s of it on the CPU), shut-down "
                      f"{r['shutdown_s']:.1f} s")  # fmt: skip
        if "vectorize_choice" in r:
            detail += f"; {r['vectorize_choice']}"
        rows.append([name, r["wall_s"], f"{100 * r['test_acc']:.2f}%", detail])
    print(format_table(["contender", "wall s (median)", "test accuracy", "where the time goes (last repeat)"], rows))
    for key, r in record["ratios"].items():
        print(f"{key}: {r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f}{interval_text(r, 2)})")
    for name in res:
        if name != "plain" and "plain" in res:
            print(f"max |weight difference| {name} vs plain: {res[name].get('max_abs_diff_vs_plain')}")


def git_state() -> dict[str, Any]:
    """The commit, and the files of lightning_fed that differ from it (the code lightning_fed ran)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                  text=True, timeout=30).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "lightning_fed_uncommitted": git("status", "--porcelain", "--", "lightning_fed").splitlines()}  # fmt: skip


def flower_available() -> str | None:
    """flwr's version, or None (with the reason printed) when it or Ray cannot be imported."""
    try:
        import flwr
        import ray  # noqa: F401
    except ImportError as err:
        print(f"note: the flower contender is left out: {err} (make .venv-flower with benchmarks/flower_env.sh)")
        return None
    return flwr.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="holds MNIST/raw (the four .gz files)")
    parser.add_argument("--workloads", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender, interleaved (A B C, C B A, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--flower-client-cpus", type=float, default=None,
                        help="Flower's client_resources num_cpus (default: Flower's default, 2)")  # fmt: skip
    parser.add_argument("--a-clients", type=int, default=2)
    parser.add_argument("--a-batch-size", type=int, default=64)
    parser.add_argument("--a-lr", type=float, default=0.01)
    parser.add_argument("--a-local-epochs", type=int, default=1)
    parser.add_argument("--a-rounds", type=int, default=3)
    parser.add_argument("--b-clients", type=int, default=100)
    parser.add_argument("--samples-per-client", type=int, default=600, help="workload B")
    parser.add_argument("--b-clients-per-round", type=int, default=10)
    parser.add_argument("--b-batch-size", type=int, default=10)
    parser.add_argument("--b-lr", type=float, default=0.05)
    parser.add_argument("--b-local-epochs", type=int, default=1)
    parser.add_argument("--b-rounds", type=int, default=5)
    parser.add_argument("--c-clients", type=int, default=1000)
    parser.add_argument("--c-samples-per-client", type=int, default=50)
    parser.add_argument("--c-clients-per-round", type=int, default=50)
    parser.add_argument("--c-batch-size", type=int, default=10)
    parser.add_argument("--c-lr", type=float, default=0.1, help="workload C (pfl's CIFAR-10 benchmark's local lr)")
    parser.add_argument("--c-local-epochs", type=int, default=1)
    parser.add_argument("--c-rounds", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the top N cProfile rows of an extra run of each non-Flower contender")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic sizes, a few seconds (plus Ray's start)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.a_rounds, args.b_rounds, args.b_clients, args.b_clients_per_round = 1, 2, 10, 3
        args.samples_per_client = 20
        args.c_clients, args.c_samples_per_client, args.c_clients_per_round, args.c_rounds = 12, 10, 4, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print_machine(info)
    repo = git_state()
    print(f"# git {repo['commit']}, uncommitted files under lightning_fed/: {len(repo['lightning_fed_uncommitted'])}")
    check_same_models()

    names = list(args.contenders)
    flwr_version = flower_available() if "flower" in names else None
    if flwr_version is None and "flower" in names:
        names.remove("flower")
    pfl_version = pfl_available() if "pfl" in names else None
    if pfl_version is None and "pfl" in names:
        names.remove("pfl")
    workloads = {
        "A": Workload("A", "seed_cnn", args.a_clients, 32 if args.smoke else None, args.a_clients, args.a_batch_size,
                      args.a_lr, args.a_local_epochs, args.a_rounds),
        "B": Workload("B", "mcmahan_2nn", args.b_clients, args.samples_per_client, args.b_clients_per_round,
                      args.b_batch_size, args.b_lr, args.b_local_epochs, args.b_rounds),
        "C": Workload("C", "pfl_cnn", args.c_clients, args.c_samples_per_client, args.c_clients_per_round,
                      args.c_batch_size, args.c_lr, args.c_local_epochs, args.c_rounds),
    }  # fmt: skip
    mnist = None if args.smoke else load_mnist(args.data_root)
    records = {}
    with tempfile.TemporaryDirectory(prefix="flower_bench_") as tmp:
        for key in args.workloads:
            w = workloads[key]
            data = prepare(w, mnist, args, tmp)
            records[key] = run_workload(w, data, names, args)
            print_workload(records[key])
    end = machine_info()
    print(f"\n# load avg at the end: {end['load_avg']}  {host_speed_text(end['host_speed'])}")
    print_json_line({"benchmark": "flower", "machine": info, "load_avg_end": end["load_avg"],
                     "host_speed_end": end["host_speed"], "flwr": flwr_version,
                     "pfl": pfl_version, "git": repo, "config": vars(args), "contenders": names,
                     "workloads": records})  # fmt: skip
    return 0


if __name__ == "__main__":
    # run as benchmarks.flower, not __main__: Ray's actors then import this module to find the ClientApp's function
    from benchmarks.flower import main as _main

    sys.exit(_main())
