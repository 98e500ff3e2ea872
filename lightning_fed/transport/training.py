"""A site's side of a FedAvg round: one model down, the site's local training, one model up.

In FedAvg mode a deployed round costs one request per sampled site: the server sends a :class:`TrainRequest` (the
global model's tensors, the batches to train on as positions in one of the site's datasets, the round) and the site
answers with its local model after training, the number of steps, and its loss if its policy releases scalars. No code
crosses the wire: the request *names* a LightningModule class, and the site builds it only if the site's operator
accepted that class (``lightning-fed worker --accept-model lightning_fed.models.MNISTClassifier``), from plain
hyper-parameters. The site keeps its optimizer state between rounds, as a worker does in simulation (for the
:data:`MAX_RUNS` most recently used runs; a request that fails validation keeps nothing); with a state
folder (``--state-dir``) it also writes it to its own disk after every round, so a site that restarts in the middle
of a run goes on from where it was (the server never sees that state).

The local loop is Lightning's automatic optimization, step for step: ``zero_grad``, ``training_step``,
``backward``, ``optimizer.step``: the deployed round equals the in-process simulation (tested). It runs on the
site's device (``--device cuda`` for a site with a GPU; the CPU by default): each batch goes through the module's
transfer hooks to that device, as in the simulation, and what the site answers comes back to its CPU first, so the
wire and secure aggregation never see a device.

Example:
    >>> import torch
    >>> from lightning_fed.testing import BoringClassifier
    >>> site = SiteTraining({"lightning_fed.testing.BoringClassifier": BoringClassifier})
    >>> model = BoringClassifier(4, 2)
    >>> request = TrainRequest("fed-1", "lightning_fed.testing.BoringClassifier", dict(model.hparams),
    ...                        model.state_dict(), "toy", [[0, 1], [2, 3]], 0, False)
    >>> out = site.train(request, torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), release_scalars=True)
    >>> out["steps"], sorted(out["state"]) == sorted(model.state_dict()), out["samples"]
    (2, True, 4)
    >>> bad = TrainRequest("fed-1", "os.system", {}, {}, "toy", [], 0, False)
    >>> site.train(bad, torch.zeros(1), torch.zeros(1), True)
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: this site does not accept model class 'os.system'...
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_fed.aggregation.functional import model_delta
from lightning_fed.backends.base import device_mover, overrides_transfer
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError, WorkerError

if TYPE_CHECKING:
    from lightning_fed.transport.secagg import SecAggInput

MAX_RUNS = 4  # runs (federation ids) whose model and optimizer a site keeps in memory
log = logging.getLogger("lightning_fed.transport.site")


@dataclass(frozen=True)
class TrainRequest:
    """One site's work in one round (see the module docstring)."""

    federation: str  # the run's id: the site keeps one model and optimizer per federation
    model: str  # the LightningModule class, by the name the site accepted it under
    hparams: dict[str, Any]  # its constructor's arguments (plain values)
    state: dict[str, Tensor]  # the global model (the module's state_dict)
    dataset: str  # which of the site's datasets
    batches: list[list[int]]  # each local step's batch, as positions in that dataset
    round_index: int
    reset_optimizer: bool  # start the optimizer state afresh this round
    secagg: SecAggInput | None = None  # under secure aggregation: the site answers with its masked update instead


@dataclass
class LocalRound:
    """What a site's local training made of a request: the model's tensors (parameters, then buffers, as the
    server's aggregator orders them) at the start and at the end, its state dict (empty under secure aggregation:
    it never leaves the site), and the counts."""

    start: list[Tensor]
    end: list[Tensor]
    state: dict[str, Tensor]
    steps: int
    samples: int
    loss_sum: float

    def update(self) -> list[Tensor]:
        """``local - global`` per tensor, in accumulation dtype (the simulation's ``model_delta``)."""
        return model_delta(self.end, self.start)


def load_class(path: str) -> type:
    """The class ``path`` names (``"package.module.Class"`` or ``"package.module:Class"``), imported by the site's
    own configuration, never by a name that came in a message."""
    module_name, _, name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise FederatedConfigError(f"`--accept-model {path!r}` is not valid: pass a class path like 'pkg.mod.Class'.")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise FederatedConfigError(f"`--accept-model {path!r}` cannot be imported at this site: {err}.") from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise FederatedConfigError(f"`--accept-model {path!r}` is not a LightningModule class: it is {found!r}.")
    return found


def site_device(device: str | torch.device) -> torch.device:
    """The device a site trains on (``--device``), checked now: one this machine has, or a
    :class:`~lightning_fed.exceptions.FederatedConfigError` that names it and what to pass instead.

    Example:
        >>> site_device("cpu")
        device(type='cpu')
        >>> site_device("gpu")
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `--device 'gpu'` is not valid: pass cpu, cuda or cuda:N...
    """
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise FederatedConfigError(f"`--device {device!r}` is not valid: pass cpu, cuda or cuda:N ({err}).") from None
    if found.type == "cpu":
        return found
    if found.type != "cuda":
        raise FederatedConfigError(
            f"`--device {device!r}` is not supported: a site trains on cpu or cuda (cuda:N for the N-th GPU)."
        )
    if not torch.cuda.is_available():
        raise FederatedConfigError(
            f"`--device {device!r}`: this site has no usable CUDA device (torch.cuda.is_available() is False); "
            "pass --device cpu, or install a CUDA build of torch."
        )
    count = torch.cuda.device_count()
    if found.index is not None and found.index >= count:
        raise FederatedConfigError(
            f"`--device {device!r}`: this site has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
            "pass one of them."
        )
    return found


class SiteTraining:
    """A site's local training, for the model classes its operator accepted (``{name: class}``), on ``device``."""

    def __init__(self, accepted: Mapping[str, type], state_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", max_runs: int = MAX_RUNS) -> None:  # fmt: skip
        self.accepted = dict(accepted)
        self.state_dir = None if state_dir is None else _state_folder(state_dir)
        self.device = site_device(device)
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise FederatedConfigError(f"`max_runs={max_runs!r}` is not valid: pass a number of runs >= 1, e.g. 4.")
        self.max_runs = max_runs
        # federation -> its model and optimizer, the most recently used last; at most max_runs are kept
        self._runs: OrderedDict[str, tuple[str, nn.Module, torch.optim.Optimizer]] = OrderedDict()

    def _state_file(self, federation: str) -> Path | None:
        if self.state_dir is None or not federation.isalnum():  # the run id names a file: letters and digits only
            return None
        return self.state_dir / f"{federation}.pt"

    def _model(self, request: TrainRequest) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The run's model and optimizer, built (and kept) only for a request whose model class, hyper-parameters
        and state are valid; the least recently used run is let go beyond ``max_runs``."""
        cls = self.accepted.get(request.model)
        if cls is None:
            raise PermissionDeniedError(
                f"this site does not accept model class {request.model!r}: it trains only the classes its operator "
                f"accepted ({sorted(self.accepted) or 'none'}; lightning-fed worker --accept-model CLASS)."
            )
        run = self._runs.get(request.federation)
        if run is None or run[0] != request.model:
            try:
                model = cls(**request.hparams)
            except TypeError as err:
                raise WorkerError(f"{request.model}(**hparams) failed at this site: {err}.") from None
            _check_state(model, request)  # before anything is kept, or moved to the device
            model = model.to(self.device)  # before its optimizer is made: the optimizer holds the moved parameters
            run = (request.model, model, _one_optimizer(model.configure_optimizers(), request.model))
            saved = self._state_file(request.federation)
            if saved is not None and saved.is_file():  # a restart in the middle of a run: the site's own state
                found = torch.load(saved, weights_only=True, map_location=self.device)
                if found.get("model") == request.model:
                    run[2].load_state_dict(found["optimizer"])
        else:
            _check_state(run[1], request)
        self._runs[request.federation] = run
        self._runs.move_to_end(request.federation)
        while len(self._runs) > self.max_runs:
            gone, _ = self._runs.popitem(last=False)
            log.warning("let go of run %r's model and optimizer (at most %d runs are kept; --state-dir keeps their "
                        "state on disk)", gone, self.max_runs)  # fmt: skip
        return run[1], run[2]

    def train(self, request: TrainRequest, data: Tensor, targets: Tensor, release_scalars: bool) -> dict[str, Any]:
        """Train on ``request.batches`` of ``(data, targets)`` from the global model; the answer the server gets."""
        done = self.fit(request, data, targets)
        return {"state": done.state, "steps": done.steps, "samples": done.samples,
                "loss_sum": done.loss_sum if release_scalars else None}  # fmt: skip

    def fit(self, request: TrainRequest, data: Tensor, targets: Tensor) -> LocalRound:
        """The round's local training from the global model (see :meth:`train`), kept at the site."""
        model, optimizer = self._model(request)
        with torch.no_grad():
            model.load_state_dict(request.state)  # copies the global model onto the site's device
        start = _on_cpu(_model_tensors(model))
        if request.reset_optimizer:
            optimizer.state.clear()
        model.train()
        loss_sum, samples = torch.zeros((), dtype=torch.float64, device=self.device), 0
        moved = batch_transfer(model, self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: logging is the server's
            for batch_idx, positions in enumerate(request.batches):
                index = torch.tensor(positions, dtype=torch.long)
                batch = moved([data[index], targets[index]])
                optimizer.zero_grad()
                output = model.training_step(batch, batch_idx)
                loss = output["loss"] if isinstance(output, Mapping) else output
                if not isinstance(loss, Tensor):
                    raise WorkerError(f"{request.model}.training_step returned {type(output).__name__}, not a loss.")
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * len(positions)  # summed on the device: no wait at each step
                samples += len(positions)
        saved = self._state_file(request.federation)
        if saved is not None:  # written whole, then renamed: a crash leaves the previous round's state
            saved.parent.mkdir(parents=True, exist_ok=True)
            partial = saved.with_suffix(".tmp")
            torch.save({"model": request.model, "optimizer": optimizer.state_dict()}, partial)
            partial.replace(saved)
        state = {} if request.secagg is not None else model.state_dict()
        state = dict(zip(state, _on_cpu(state.values())))
        return LocalRound(start, _on_cpu(_model_tensors(model)), state, len(request.batches), samples, float(loss_sum))


def _check_state(model: nn.Module, request: TrainRequest) -> None:
    """Refuse a global model whose tensor names are not the model's."""
    missing = set(model.state_dict()) ^ set(request.state)
    if missing:
        raise WorkerError(f"the global model's tensors do not match {request.model}: {sorted(missing)[:5]}.")


def _state_folder(path: str | Path) -> Path:
    """``--state-dir``, made if missing and checked now: a folder this site can write to."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FederatedConfigError(
            f"`--state-dir {path!s}` is a file, not a folder: pass a folder of this site's own (it is made if missing)."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FederatedConfigError(
            f"`--state-dir {path!s}` is not usable: {err.strerror or err}; pass a folder of this site's own "
            "(it is made if missing)."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FederatedConfigError(
            f"`--state-dir {path!s}` is not writable by this site: pass a folder of this site's own, or give it "
            "write access."
        )
    return folder


def batch_transfer(model: Any, device: torch.device) -> Callable[[Any], Any]:
    """How the site moves each local batch, decided once a round as the simulation's backends decide it
    (:func:`~lightning_fed.strategies.glue.batch_mover`): through the LightningModule's transfer hooks as Lightning's
    Trainer runs them (``on_before_batch_transfer``, ``transfer_batch_to_device``, ``on_after_batch_transfer``,
    dataloader 0) where the module overrides one; else straight to ``device``, and not at all on the CPU.

    Example:
        >>> from lightning_fed.testing import BoringClassifier
        >>> class Halved(BoringClassifier):
        ...     def on_after_batch_transfer(self, batch, dataloader_idx):
        ...         return [batch[0] / 2, batch[1]]
        >>> batch_transfer(Halved(2, 2), torch.device("cpu"))([torch.ones(1, 2), torch.zeros(1)])[0]
        tensor([[0.5000, 0.5000]])
    """
    if overrides_transfer(model):

        def through_hooks(batch: Any) -> Any:
            batch = model.on_before_batch_transfer(batch, 0)
            batch = model.transfer_batch_to_device(batch, device, 0)
            return model.on_after_batch_transfer(batch, 0)

        return through_hooks
    return device_mover(device)


def _on_cpu(tensors: Iterable[Tensor]) -> list[Tensor]:
    """Copies of ``tensors`` (detached) in the site's CPU memory: what leaves the training loop."""
    return [t.detach().to("cpu", copy=True) for t in tensors]


def _model_tensors(model: nn.Module) -> list[Tensor]:
    """Every parameter, then every buffer, each object once: the order of the server's aggregator."""
    seen: set[int] = set()
    return [t for t in [*model.parameters(), *model.buffers()] if not (id(t) in seen or seen.add(id(t)))]


def _one_optimizer(configured: Any, name: str) -> torch.optim.Optimizer:
    """The optimizer of ``configure_optimizers()`` (one optimizer, without LR schedulers in this version)."""
    found = configured
    if isinstance(found, Mapping):
        if found.get("lr_scheduler") is not None:
            raise WorkerError(f"{name}.configure_optimizers returns an LR scheduler: not supported at a site yet.")
        found = found.get("optimizer")
    if isinstance(found, Sequence) and not isinstance(found, torch.optim.Optimizer):
        if len(found) != 1:
            raise WorkerError(
                f"{name}.configure_optimizers returns {len(found)} items: a site trains with one optimizer."
            )
        found = found[0]
    if not isinstance(found, torch.optim.Optimizer):
        raise WorkerError(f"{name}.configure_optimizers returns {type(found).__name__}, not an optimizer.")
    return found
