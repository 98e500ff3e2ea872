"""Client failures in FedAvg rounds: errors, dropouts and stragglers.

Three ways a sampled worker can fail to deliver its update in a round, all handled by :class:`ClientFailures`:

* **errors**: its ``training_step`` raises. The strategy catches the exception for that worker, skips its remaining
  batches in the round (the step returns ``None``, so Lightning skips backward and the optimizer step) and leaves its
  update out;
* **dropout**: with ``dropout_rate=p`` each worker drops out of a round with probability ``p``, drawn from
  ``(seed, round)`` like client sampling (so a run is reproducible and a resumed run continues exactly). A dropped
  worker's batches are skipped and its update left out;
* **stragglers**: with ``deadline_steps=k`` a worker stops after ``k`` local batches in the round. Its partial
  update is left out with ``straggler_policy="drop"`` (the default: McMahan et al.'s FedAvg drops late clients) or
  counted, with its full sample weight, with ``"partial"`` (FedProx, Li et al. 2020, counts their partial work).

The round aggregates the survivors (the weighted mean's division at the end renormalizes their weights) when at
least ``min_clients`` of them finished; otherwise the run stops with :class:`RoundFailedError`, naming the round, the
survivors and ``min_clients``. Failures are logged and counted in the strategy's ``worker_summary()``.

Over several processes each process sees its own workers' failures; :meth:`ClientFailures.report` and
:meth:`ClientFailures.merge` combine them at the end of a round (as torchmetrics' states declare how they reduce).

Example:
    >>> dropped_workers(["w0", "w1", "w2", "w3"], rate=0.5, seed=0, round_index=0) == dropped_workers(
    ...     ["w0", "w1", "w2", "w3"], rate=0.5, seed=0, round_index=0)
    True
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from lightning_fed.data.loader import mix_seed
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.logs import info, warn

_DROPOUT_STREAM = 0xD0C  # keeps dropout draws independent of client sampling and the loaders' shuffling
_POLICIES = ("drop", "partial")


class NonFiniteUpdateError(LightningFedError, RuntimeError):
    """A worker's model is not finite (NaN or inf) at the end of its local training: its update never leaves it."""


class RoundFailedError(LightningFedError, RuntimeError):
    """Too few workers delivered an update for the round to be aggregated (fewer than ``min_clients``).

    Example:
        >>> failures = ClientFailures(deadline_steps=1, min_clients=2)
        >>> failures.begin_round(3, ["a", "b"], all_worker_ids=["a", "b"], seed=0)
        >>> [failures.skip_batch(w) for w in ("a", "b", "b")]  # "b" misses the deadline
        [False, False, True]
        >>> failures.finish("a"), failures.finish("b")
        (True, False)
        >>> failures.end_round()
        Traceback (most recent call last):
        ...
        lightning_fed.rounds.failures.RoundFailedError: Round 3 cannot be aggregated: 1 worker(s) delivered ...
    """


class WorkerFailedElsewhere(LightningFedError, RuntimeError):
    """Stands for the exception of a worker that failed in another process, or before a resume (only its text
    travels)."""


def dropped_workers(worker_ids: Sequence[Hashable], rate: float, seed: int, round_index: int) -> set[Hashable]:
    """The workers that drop out of round ``round_index``: one draw per worker of the federation, in order, from a
    generator seeded by ``(seed, round_index)``; a worker drops when its draw is below ``rate``."""
    if rate <= 0:
        return set()
    draws = np.random.default_rng(mix_seed(seed, round_index, _DROPOUT_STREAM)).random(len(worker_ids))
    return {worker_id for worker_id, draw in zip(worker_ids, draws) if draw < rate}


class ClientFailures:
    """Decides, per round, which workers' batches run and whose updates count (see the module docstring).

    Args:
        dropout_rate: the probability that a worker drops out of a round, in [0, 1).
        deadline_steps: the local batches a worker may train per round (``None``: no deadline).
        straggler_policy: ``"drop"`` (leave a late worker's update out) or ``"partial"`` (count it).
        min_clients: the fewest updates a round needs (>= 1).

    Example:
        >>> failures = ClientFailures(deadline_steps=1, straggler_policy="partial")
        >>> failures.begin_round(0, ["a", "b"], all_worker_ids=["a", "b"], seed=0)
        >>> [failures.skip_batch("a"), failures.skip_batch("a"), failures.skip_batch("b")]
        [False, True, False]
        >>> failures.record_failure("b", ValueError("disk full"))
        >>> failures.finish("a"), failures.finish("b")
        (True, False)
        >>> failures.end_round()
        ['a']
        >>> failures.counts("a"), failures.counts("b")
        ({'failed': 0, 'dropped': 0, 'late': 1}, {'failed': 1, 'dropped': 0, 'late': 0})
    """

    def __init__(
        self,
        dropout_rate: float = 0.0,
        deadline_steps: int | None = None,
        straggler_policy: str = "drop",
        min_clients: int = 1,
    ) -> None:
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or not 0 <= dropout_rate < 1:
            raise FederatedConfigError(
                f"`dropout_rate={dropout_rate!r}` is not valid: pass the probability that a worker drops out of a "
                "round, in [0, 1)."
            )
        if deadline_steps is not None and (
            isinstance(deadline_steps, bool) or not isinstance(deadline_steps, int) or deadline_steps < 1
        ):
            raise FederatedConfigError(
                f"`deadline_steps={deadline_steps!r}` is not valid: pass an integer >= 1 (local batches per round) "
                "or None."
            )
        if straggler_policy not in _POLICIES:
            raise FederatedConfigError(
                f"`straggler_policy={straggler_policy!r}` is not valid: choose 'drop' (leave late updates out) or "
                "'partial' (count them)."
            )
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise FederatedConfigError(f"`min_clients={min_clients!r}` is not valid: pass an integer >= 1.")
        self.dropout_rate = float(dropout_rate)
        self.deadline_steps = deadline_steps
        self.straggler_policy = straggler_policy
        self.min_clients = min_clients
        self._counts: dict[Hashable, dict[str, int]] = {}
        self._round = 0
        self._batches: dict[Hashable, int] = {}
        self._dropped: set[Hashable] = set()
        self._failed: dict[Hashable, BaseException] = {}
        self._late: set[Hashable] = set()
        self._finished: list[Hashable] = []
        self._survivors: list[Hashable] = []

    @property
    def enabled(self) -> bool:
        """Whether any failure is simulated (errors are caught in every case)."""
        return self.dropout_rate > 0 or self.deadline_steps is not None

    def check_setup(self, clients_per_round: int) -> None:
        """Refuse a ``min_clients`` that no round can reach."""
        if self.min_clients > clients_per_round:
            raise FederatedConfigError(
                f"`min_clients={self.min_clients}` can never be met: rounds sample {clients_per_round} workers. Lower "
                "min_clients or raise clients_per_round."
            )

    def effective_steps(self, steps: Iterable[int]) -> list[int]:
        """The batches each worker really trains: its planned steps, cut at the deadline."""
        return [s if self.deadline_steps is None else min(s, self.deadline_steps) for s in steps]

    def begin_round(
        self, round_index: int, worker_ids: Sequence[Hashable], all_worker_ids: Sequence[Hashable], seed: int
    ) -> None:
        """Start round ``round_index`` with the sampled ``worker_ids``; draws who drops out."""
        self._round = round_index
        self._batches = {}
        self._failed = {}
        self._late = set()
        self._finished = []
        self._survivors = []
        sampled = set(worker_ids)
        self._dropped = dropped_workers(all_worker_ids, self.dropout_rate, seed, round_index) & sampled
        for worker_id in worker_ids:
            if worker_id in self._dropped:
                self._count(worker_id, "dropped")
        if self._dropped:
            names = [w for w in worker_ids if w in self._dropped]
            info(f"Round {round_index}: workers {names} drop out (dropout_rate={self.dropout_rate}).")

    def skip_batch(self, worker_id: Hashable) -> bool:
        """Called for each of the worker's batches: whether to skip it (dropped, failed, or past the deadline)."""
        position = self._batches[worker_id] = self._batches.get(worker_id, 0) + 1
        if worker_id in self._dropped or worker_id in self._failed:
            return True
        if self.deadline_steps is not None and position > self.deadline_steps:
            if worker_id not in self._late:
                self._late.add(worker_id)
                self._count(worker_id, "late")
            return True
        return False

    def batches_of(self, worker_id: Hashable) -> int:
        """How many of ``worker_id``'s batches this round have passed :meth:`skip_batch` (its current batch's
        position, from 1)."""
        return self._batches.get(worker_id, 0)

    def record_failure(self, worker_id: Hashable, error: BaseException) -> None:
        """The worker's training step raised ``error``: skip the rest of its round and leave its update out."""
        if worker_id in self._failed:
            return
        self._failed[worker_id] = error
        self._count(worker_id, "failed")
        step = self._batches.get(worker_id, 0)
        warn(
            f"Round {self._round}: worker {worker_id!r} failed at its local batch {step} ({type(error).__name__}: "
            f"{error}); its remaining batches are skipped and its update is left out of the round."
        )

    def finish(self, worker_id: Hashable) -> bool:
        """The worker's local training ended: whether its update counts."""
        self._finished.append(worker_id)
        if worker_id in self._failed or worker_id in self._dropped:
            return False
        if worker_id in self._late:
            counted = self.straggler_policy == "partial"
            info(
                f"Round {self._round}: worker {worker_id!r} stopped at the deadline of {self.deadline_steps} local "
                f"steps; its partial update is {'counted' if counted else 'left out'} "
                f"(straggler_policy={self.straggler_policy!r})."
            )
            if not counted:
                return False
        self._survivors.append(worker_id)
        return True

    def end_round(self) -> list[Hashable]:
        """The survivors; raises :class:`RoundFailedError` when workers trained but fewer than ``min_clients``
        delivered an update (a round in which no worker ran at all, e.g. cut by ``max_steps``, passes)."""
        survivors, finished = list(self._survivors), list(self._finished)
        self._finished, self._survivors = [], []
        if finished and len(survivors) < self.min_clients:
            failed = dict(self._failed)
            excluded = ", ".join(f"{w!r} ({self._reason(w)})" for w in finished if w not in survivors)
            error = RoundFailedError(
                f"Round {self._round} cannot be aggregated: {len(survivors)} worker(s) delivered an update "
                f"({[*survivors]}), fewer than min_clients={self.min_clients}. Left out: {excluded}. Lower "
                "min_clients, dropout_rate or the deadline, or fix the failing workers."
            )
            first = next(iter(failed.values()), None)
            if first is not None:
                raise error from first
            raise error
        return survivors

    def _reason(self, worker_id: Hashable) -> str:
        if worker_id in self._failed:
            err = self._failed[worker_id]
            return f"failed: {type(err).__name__}: {err}"
        if worker_id in self._dropped:
            return "dropped out"
        return f"missed the deadline of {self.deadline_steps} steps"

    def _count(self, worker_id: Hashable, what: str) -> None:
        self._counts.setdefault(worker_id, {"failed": 0, "dropped": 0, "late": 0})[what] += 1

    def counts(self, worker_id: Hashable) -> dict[str, int]:
        """How many rounds the worker failed in, dropped out of, and missed the deadline of."""
        return dict(self._counts.get(worker_id, {"failed": 0, "dropped": 0, "late": 0}))

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {worker_id: dict(c) for worker_id, c in self._counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._counts = {worker_id: dict(c) for worker_id, c in state.get("counts", {}).items()}

    def round_state(self) -> dict[str, Any]:
        """The open round's decisions (dropped, failed, late, finished, batch counters) and the counters, for a
        checkpoint in the middle of a round; :meth:`load_round_state` continues from it."""
        return {
            "round": self._round,
            "batches": dict(self._batches),
            "dropped": list(self._dropped),
            "failed": {w: f"{type(e).__name__}: {e}" for w, e in self._failed.items()},
            "late": list(self._late),
            "finished": list(self._finished),
            "survivors": list(self._survivors),
            "counts": {w: dict(c) for w, c in self._counts.items()},
        }

    def load_round_state(self, state: dict[str, Any]) -> None:
        """Continue an open round from :meth:`round_state` (after :meth:`begin_round`)."""
        self._round = int(state["round"])
        self._batches = dict(state["batches"])
        self._dropped = set(state["dropped"])
        self._failed = {w: WorkerFailedElsewhere(text) for w, text in state["failed"].items()}
        self._late = set(state["late"])
        self._finished = list(state["finished"])
        self._survivors = list(state["survivors"])
        self._counts = {w: dict(c) for w, c in state["counts"].items()}

    def report(self, mine: Iterable[Hashable]) -> dict[str, Any]:
        """What this process knows of the round, for :meth:`merge` in every process (``mine``: its workers)."""
        mine = set(mine)
        return {
            "finished": list(self._finished),
            "survivors": list(self._survivors),
            "failed": {w: f"{type(e).__name__}: {e}" for w, e in self._failed.items()},
            "late": [w for w in self._late if w in mine],
            "counts": {w: dict(c) for w, c in self._counts.items() if w in mine},
        }

    def merge(self, reports: Sequence[dict[str, Any]], order: Sequence[Hashable]) -> None:
        """Combine every process's :meth:`report` (in process order); workers listed in federation ``order``."""
        position = {w: i for i, w in enumerate(order)}

        def in_order(ids: Iterable[Hashable]) -> list[Hashable]:
            return sorted(ids, key=lambda w: position.get(w, len(position)))

        self._finished = in_order(w for r in reports for w in r["finished"])
        self._survivors = in_order(w for r in reports for w in r["survivors"])
        for rank, r in enumerate(reports):
            for w, text in r["failed"].items():
                self._failed.setdefault(w, WorkerFailedElsewhere(f"{text} (in process {rank})"))
            self._late.update(r["late"])
            self._counts.update(r["counts"])

    def describe(self) -> str:
        parts = [f"min_clients={self.min_clients}"]
        if self.dropout_rate:
            parts.append(f"dropout_rate={self.dropout_rate}")
        if self.deadline_steps is not None:
            parts.append(f"deadline_steps={self.deadline_steps} ({self.straggler_policy!r})")
        return ", ".join(parts)
