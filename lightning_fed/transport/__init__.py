"""Real deployment: a site runs one worker (:mod:`.worker_main`), the server reaches it with :class:`RemoteWorker`
over gRPC with mutual TLS, and only typed messages and tensors cross the wire (:mod:`.wire`). See docs/deployment.md.
"""

from lightning_fed.transport.certificates import make_federation
from lightning_fed.transport.errors import SiteRefusedError, SiteUnavailableError, WireError
from lightning_fed.transport.remote import RemoteWorker
from lightning_fed.transport.server import SiteServer

__all__ = ["RemoteWorker", "SiteRefusedError", "SiteServer", "SiteUnavailableError", "WireError", "make_federation"]
