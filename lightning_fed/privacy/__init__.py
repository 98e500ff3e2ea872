"""Privacy: a worker's data-access policy and its audit log (differential privacy wrappers will live here too).

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.privacy import DataAccessPolicy
    >>> w = sy.VirtualWorker(id="w", policy=DataAccessPolicy())
    >>> sy.send(torch.zeros(1), w).get(), len(w.audit_log)
    (tensor([0.]), 1)
"""

from lightning_fed.privacy.audit import AuditLog, AuditRecord, ReleaseRequest
from lightning_fed.privacy.policy import DataAccessPolicy, WorkerGuard

__all__ = ["AuditLog", "AuditRecord", "DataAccessPolicy", "ReleaseRequest", "WorkerGuard"]
