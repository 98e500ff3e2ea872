"""Vectorized workers (``FederatedStrategy(vectorize=True)``): a round's workers train together under ``torch.vmap``.

``cohorts`` (which workers share a stacked optimizer; the steps the loader yields), ``checks`` (what can be
vectorized exactly), ``functional`` (stacking, ``training_step`` under ``functional_call``, per-worker clipping),
``workers`` (the stacked parameters and optimizer) and ``backend`` (the Lightning steps).
"""

from lightning_fed.backends.vectorized.backend import VectorizedBackend
from lightning_fed.backends.vectorized.checks import check_vectorizable
from lightning_fed.backends.vectorized.cohorts import Cohort, VectorStep, cohort_steps, plan_cohorts
from lightning_fed.backends.vectorized.workers import VectorizedWorkers

__all__ = [
    "Cohort",
    "VectorStep",
    "VectorizedBackend",
    "VectorizedWorkers",
    "check_vectorizable",
    "cohort_steps",
    "plan_cohorts",
]
