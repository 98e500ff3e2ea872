"""How a federation's workers run inside Lightning's fit loop: one backend a way (see :mod:`.base`)."""

from lightning_fed.backends.base import Backend, LightningCalls
from lightning_fed.backends.distributed import DistributedBackend, Processes
from lightning_fed.backends.follow import FollowBackend
from lightning_fed.backends.sequential import SequentialBackend
from lightning_fed.backends.threaded import ThreadedBackend
from lightning_fed.backends.vectorized import VectorizedBackend

__all__ = [
    "Backend",
    "DistributedBackend",
    "FollowBackend",
    "LightningCalls",
    "Processes",
    "SequentialBackend",
    "ThreadedBackend",
    "VectorizedBackend",
]
