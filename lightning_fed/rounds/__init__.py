"""The round lifecycle of federated training, without Lightning: planning, failures, per-worker state, rounds."""

from lightning_fed.rounds.byzantine import ByzantineWorkers
from lightning_fed.rounds.failures import ClientFailures, NonFiniteUpdateError, RoundFailedError
from lightning_fed.rounds.lifecycle import Rounds
from lightning_fed.rounds.module_state import model_tensors
from lightning_fed.rounds.planning import RoundPlan, RoundPlanner, limit_steps, resolve_clients_per_round
from lightning_fed.rounds.stats import WorkerLosses, WorkerStats
from lightning_fed.rounds.worker_state import WorkerOptimizerStates, WorkerSchedulerStates

__all__ = [
    "ByzantineWorkers",
    "ClientFailures",
    "NonFiniteUpdateError",
    "RoundFailedError",
    "RoundPlan",
    "RoundPlanner",
    "Rounds",
    "WorkerLosses",
    "WorkerOptimizerStates",
    "WorkerSchedulerStates",
    "WorkerStats",
    "limit_steps",
    "model_tensors",
    "resolve_clients_per_round",
]
