"""Workers: who holds the data. ``VirtualWorker`` simulates a remote party inside this process; ``me`` is us."""

from lightning_fed.workers.base import BaseWorker, LocalWorker, VirtualWorker, current_worker, me
from lightning_fed.workers.grid import PrivateGridNetwork
from lightning_fed.workers.store import ObjectStore

__all__ = ["BaseWorker", "LocalWorker", "ObjectStore", "PrivateGridNetwork", "VirtualWorker", "current_worker", "me"]
