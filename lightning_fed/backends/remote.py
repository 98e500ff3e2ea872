"""FedAvg rounds at remote sites: one model down and one model up per sampled site per round.

Each Lightning step of a round is one site's whole local work: the strategy sends the site the global model and the
positions of its round's batches (a :class:`~lightning_fed.transport.training.TrainRequest`), the site trains the
LightningModule class its operator accepted and answers with its local model; the update goes into the round as a
simulated worker's does, and the aggregator finishes the round on the server. Nothing is sent per batch.

The sites of a round train **at the same time** (the seed tutorial's third flaw, sequential training, fixed where the
workers are machines): at the round's first step every sampled site gets its request, and each Lightning step then
takes its site's answer, in order. Every site starts from the same global model, so the result is the one a
sequential round gives (tested against the simulation). With simulated dropouts or stragglers the requests go one
at a time, as the failures are decided step by step.

**Secure aggregation** (``secure_aggregation=True`` around a server-side sum aggregator) runs its client side at
the sites: the backend sets :attr:`SecureAggregator.round_factory` so that each round's protocol is a
:class:`~lightning_fed.secure_aggregation.remote.RemoteSecureAggregationRound`. At the round's start every sampled
site advertises its public keys and sends its encrypted shares (two small requests a site); its ``TrainRequest``
carries its inbox of shares and its public sample weight, and the site answers with ``weight * update`` clipped,
quantized and masked (an int64 vector of the model's size) and its clipped count, never its model: the server never
loads a site's local model into the module; the unmasked sum goes to the inner aggregator's ``finalize_from_sum``
after one unmasking request a survivor. A site left out in the key exchange or failing its training is that
round's failure (``tolerate_failures``, ``min_clients``) and is recovered from the others' shares (at most
``n - t``). A site refuses a seeded ``SecureAggregationConfig(seed=...)`` unless started with
``--allow-seeded-secagg`` (tests only).

What else runs at a simulated worker beside its training (distributed DP noise, sample-level DP, SCAFFOLD's and
FedProx's corrections) would have to run at the site too: such aggregators are refused here for now, naming the fix.
Server-side aggregators (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, robust rules) work unchanged, and so does
client-level DP with the server's noise (central DP: its clipping runs on the server, which that model trusts with
the raw updates).

Example (sites started with ``lightning-fed worker --accept-model ...``; see docs/deployment.md)::

    data = SiteDataModule([alice, bob], "mnist-train", batch_size=64, seed=0)
    pl.Trainer(strategy=FederatedStrategy(aggregation="fedadam"), max_epochs=2).fit(MNISTClassifier(), datamodule=data)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_fed.aggregation import Aggregator
from lightning_fed.aggregation.wrapper import AggregatorWrapper, aggregator_chain
from lightning_fed.backends.base import LocalWork
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.privacy.dp import DPAggregator
from lightning_fed.rounds.planning import RoundPlan
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregator
from lightning_fed.secure_aggregation.remote import RemoteSecureAggregationRound
from lightning_fed.transport.training import TrainRequest

_WORKER_HOOKS = ("worker_start", "adjust_gradients", "worker_update")


@dataclass(frozen=True, slots=True)
class SiteWork(LocalWork):
    """One Lightning step of a deployed round: a site and the positions of its local batches. Lightning's transfer
    hooks never see it: the site runs them on each of its real batches (:mod:`lightning_fed.transport.training`)."""

    worker: str
    batches: tuple[tuple[int, ...], ...]


def check_remote_aggregator(aggregator: Aggregator) -> None:
    """Refuse an aggregator chain that needs code at the worker beside its training (see the module docstring)."""
    for part in aggregator_chain(aggregator):
        if isinstance(part, SecureAggregator):
            continue  # its client side runs at the sites (transport.secagg)
        if central_dp(part):  # (DPAggregator refuses to wrap secure aggregation with the server's noise)
            continue  # its clipping runs on the server, which central DP trusts with the raw update anyway
        worker_side = isinstance(part, AggregatorWrapper) or any(
            getattr(type(part), hook) is not getattr(Aggregator, hook) for hook in _WORKER_HOOKS
        )
        if worker_side:
            raise FederatedConfigError(
                f"aggregation={aggregator!r} runs code at each worker ({type(part).__name__}: clipping, noise or "
                "gradient corrections), and remote sites run only their training and secure aggregation's masking "
                "in this version: use a server-side aggregator (fedavg, fedavgm, fedadam, fedyogi, fedadagrad, "
                "median, trimmed mean, krum), alone, inside secure aggregation (secure_aggregation=True) or with "
                "client-level DP with noise='server', or simulated workers for distributed-noise and sample-level "
                "DP, SCAFFOLD and FedProx."
            )


def find_secure(aggregator: Aggregator) -> SecureAggregator | None:
    """The :class:`SecureAggregator` in ``aggregator``'s chain, if any."""
    return next((part for part in aggregator_chain(aggregator) if isinstance(part, SecureAggregator)), None)


def constructor_args(module: Any) -> dict[str, Any]:
    """The module's hyper-parameters a site builds it from (LightningCLI's own ``_class_path``... left out)."""
    return {k: v for k, v in dict(getattr(module, "hparams", {})).items() if not k.startswith("_")}


def central_dp(part: Aggregator) -> bool:
    """Client-level DP with the noise added by the server (``DPConfig(noise="server")``): the server is trusted with
    each worker's update, so clipping it there (as the simulation does in this process) changes nothing."""
    return isinstance(part, DPAggregator) and part.config.noise == "server"


class RemoteBackend(SequentialBackend):
    """FedAvg rounds whose workers are remote sites (see the module docstring)."""

    name = "remote"
    remote = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.federation = uuid.uuid4().hex  # the sites keep one model and optimizer state per run
        self._pending: dict[Any, Future] = {}  # the round's requests in flight, by site id
        self._pool: ThreadPoolExecutor | None = None
        self._secure: RemoteSecureAggregationRound | None = None  # the open round's protocol, under secure aggregation

    def process_dataloader(self, loader: Any) -> Any:
        check_remote_aggregator(self.rounds.aggregator)
        if self.rounds.failures.deadline_steps is not None:
            raise FederatedConfigError(
                "`deadline_steps` counts a worker's local batches on the server, but a remote site trains its whole "
                "round in one request: leave deadline_steps=None with remote sites."
            )
        self._by_id = {w.id: w for w in loader.workers}
        secure = find_secure(self.rounds.aggregator)
        if secure is not None:  # each round's protocol runs with the sites: their secrets stay there
            secure.round_factory = self._secure_round
        return super().process_dataloader(loader)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lightning-fed-sites")
        return self._pool

    def _secure_round(self, ids: list[Hashable], numel: int, config: SecureAggregationConfig,
                      round_index: int) -> RemoteSecureAggregationRound:  # fmt: skip
        """A round's protocol with its sites (rounds 0 and 1 now: keys and encrypted shares)."""
        self._secure = RemoteSecureAggregationRound(ids, numel, config, round_index, sites=self._by_id,
                                                    federation=self.federation, executor=self._executor(),
                                                    tolerate_failures=self.tolerate_failures)  # fmt: skip
        return self._secure

    def round_length(self, plan: RoundPlan) -> int:
        return len(plan.workers)  # one Lightning step per site

    def round_batches(self, plan: RoundPlan) -> Iterator[Any]:
        assert self.planner is not None
        for worker, steps in zip(plan.workers, plan.steps):
            batches = self.planner.worker_batches(worker, steps, plan.round_index)
            yield SiteWork(str(worker.id), tuple(tuple(b) for b in batches))

    def begin_round(self, plan: RoundPlan) -> None:
        super().begin_round(plan)
        if self.rounds.failures.enabled or len(plan.workers) < 2:
            return  # simulated failures are decided step by step: one request at a time
        pool = self._executor()
        for work in self.round_batches(plan):  # every site starts from the global model: send them all now
            worker = self._by_id[work.worker]
            if self._secure is not None and not self._secure.takes_part(worker.id):
                continue  # left out of the key exchange: its step records this round's failure
            self._pending[worker.id] = pool.submit(worker.train, self._request(work, plan))

    def _request(self, work: SiteWork, plan: RoundPlan) -> TrainRequest:
        module = self.calls.module()
        secure = self._secure  # under secure aggregation: the site's shares and weight (raises if it was left out)
        masking = None if secure is None else secure.train_input(work.worker, self.rounds.stats.samples(work.worker))
        return TrainRequest(
            self.federation, f"{type(module).__module__}.{type(module).__qualname__}", constructor_args(module),
            {k: v.detach().clone() for k, v in self.rounds.global_state(module.state_dict(keep_vars=True)).items()},
            self.loader.dataset_name, [list(b) for b in work.batches], plan.round_index,
            self.rounds.optimizer_states.reset_each_round, masking,
        )  # fmt: skip

    def batch_start(self, batch: Any) -> Any:
        rounds = self.rounds
        worker = self._by_id[batch.worker]
        self.open_step(batch)
        rounds.start_worker(worker, self.calls.optimizers(), self.step_schedulers)
        self.skip = rounds.failures.skip_batch(worker.id)
        self.calls.progress("Round", worker)
        return batch

    def training_step(self, args: tuple, kwargs: dict) -> Any:
        rounds, work = self.rounds, self.batch
        worker = rounds.active
        if self.skip or worker is None:
            return self.calls.skipped_output()
        module = self.calls.module()
        assert rounds.plan is not None and self.loader is not None
        pending = self._pending.pop(worker.id, None)
        try:
            answer = pending.result() if pending is not None else worker.train(self._request(work, rounds.plan))
        except LightningFedError as err:  # unreachable, timed out, refused: this round's failure
            if not self.tolerate_failures:
                raise
            rounds.failures.record_failure(worker.id, err)
            rounds.reset_module()
            self.skip = True
            return self.calls.skipped_output()
        if self._secure is not None:  # only the site's masked update came: the module keeps the global model
            self._secure.receive(worker.id, answer.get("masked"), answer.get("clipped"))
        else:
            with torch.no_grad():
                module.load_state_dict(answer["state"])  # the site's local model, into the module's own tensors
        rounds.local_steps = int(answer["steps"])
        rounds.stats.rows[worker.id]["steps"] += rounds.local_steps
        if answer.get("loss_sum") is not None and answer["samples"]:
            mean = torch.tensor(answer["loss_sum"] / answer["samples"])
            rounds.losses.add(worker.id, mean, int(answer["samples"]))
            rounds.stats.loss(worker.id, mean)
        return self.calls.skipped_output()  # nothing for Lightning to back-propagate: the site has trained

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any, kwargs: dict) -> Any:
        try:
            out = closure()  # runs training_step: the site's round
        finally:
            self.batch = None
        self.end_step()
        return out

    def teardown(self) -> None:
        super().teardown()
        secure = find_secure(self.rounds.aggregator)
        if secure is not None and secure.round_factory == self._secure_round:
            secure.round_factory = None  # the aggregator may serve simulated workers next
        self._secure = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return super().describe() + f"; remote sites, one request a round each (run {self.federation[:8]})"
