"""The exceptions lightning_fed raises.

Configuration errors (a bad argument, a setting that cannot work) subclass Lightning's
``MisconfigurationException`` so that Lightning users can catch them as they already do.
Errors that happen while a worker runs a command come back as :class:`WorkerError`, naming the worker.

Example:
    >>> from lightning_fed.exceptions import FederatedConfigError
    >>> try:
    ...     raise FederatedConfigError("`num_workers=0` is not valid: pass at least 1 worker.")
    ... except ValueError as err:
    ...     print(err)
    `num_workers=0` is not valid: pass at least 1 worker.
"""

from __future__ import annotations

from lightning.fabric.utilities.exceptions import MisconfigurationException


class LightningFedError(Exception):
    """Base class of every error lightning_fed raises on purpose."""


class FederatedConfigError(LightningFedError, MisconfigurationException, ValueError):
    """A bad argument or an impossible configuration. Also a ``ValueError`` and a ``MisconfigurationException``."""


class WorkerError(LightningFedError, RuntimeError):
    """A command failed at a worker; the worker's store is left as it was before the command."""


class PointerError(LightningFedError, RuntimeError):
    """A pointer was used in a way that cannot work (already fetched, deleted, or mixed with another worker)."""


class PermissionDeniedError(LightningFedError, PermissionError):
    """A worker's data-access policy refused to release an object."""


class NotAWorkerError(LightningFedError, TypeError):
    """Something that is not a worker was passed where a worker is needed."""


class SealedStateError(LightningFedError, RuntimeError):
    """A worker's sealed state (in a checkpoint) cannot be opened: another worker, federation or key, or a changed
    file."""


class CheckpointMismatchError(FederatedConfigError):
    """A checkpoint from another federation (workers, aggregator, mode, secure aggregation, DP) or a plain Lightning
    checkpoint given to resume a federated run."""
