"""The errors of the deployment layer: a message that cannot cross the wire, and a site that cannot be reached.

Both are :class:`~lightning_fed.exceptions.WorkerError`\\ s, so code that handles a failing worker handles them too.
Errors a site raises while answering (``WorkerError``, ``PermissionDeniedError``, ``PointerError``...) come back as
the same exception types with the site's message (see :mod:`lightning_fed.transport.wire`).

Example:
    >>> from lightning_fed.exceptions import WorkerError
    >>> issubclass(WireError, WorkerError), issubclass(SiteUnavailableError, WorkerError)
    (True, True)
"""

from __future__ import annotations

from lightning_fed.exceptions import WorkerError


class WireError(WorkerError):
    """A message or an answer cannot cross the wire: a type that is not sent, a malformed or oversized message."""


class SiteUnavailableError(WorkerError):
    """A site did not answer: it is not running, unreachable, hung past the timeout, or the TLS handshake failed."""


class SiteRefusedError(WorkerError):
    """A site refused this peer: its certificate is valid, but it is not a peer the site serves."""
