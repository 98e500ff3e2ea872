"""What leaves a worker during federated training, checked against its data-access policy and audited.

Training runs at the worker (in its session); two things leave it: its **model update** at the end of its local
work, through the aggregator (masked there under secure aggregation), and its **loss** as a per-worker metric, once a
round. A worker whose policy keeps model updates (``release_model=False``) lets its update leave only masked: a
federation without secure aggregation is refused up front, naming the worker and the fix. A worker whose policy
keeps scalars (``release_scalars=False``) has no per-worker loss logged, kept in statistics or checkpointed. Every
update and every logged loss is recorded in the worker's audit log with the rule that let it leave.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.aggregation import FedAvg
    >>> from lightning_fed.privacy import DataAccessPolicy
    >>> w = sy.VirtualWorker(id="rel-w", policy=DataAccessPolicy(release_model=False))
    >>> check_update_release([w], FedAvg())
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: worker 'rel-w' keeps its model updates ...
    >>> audit(w, "update", "aggregate", "secure_aggregation", (3,))
    >>> [(r.kind, r.command, r.rule) for r in w.audit_log]
    [('update', 'aggregate', 'secure_aggregation')]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning_fed.aggregation import Aggregator
from lightning_fed.aggregation.wrapper import aggregator_chain
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.secure_aggregation import SecureAggregator


def is_masked(aggregator: Aggregator) -> bool:
    """Whether updates leave workers masked (secure aggregation is in the aggregator chain)."""
    return any(isinstance(a, SecureAggregator) for a in aggregator_chain(aggregator))


def update_rule(aggregator: Aggregator) -> str:
    """The rule under which a worker's update leaves it: ``"secure_aggregation"`` (masked) or ``"release_model"``."""
    return "secure_aggregation" if is_masked(aggregator) else "release_model"


def check_update_release(workers: Iterable[Any], aggregator: Aggregator) -> None:
    """Refuse a federation in which a worker that keeps its model updates would send one unmasked."""
    if is_masked(aggregator):
        return
    for worker in workers:
        policy = getattr(worker, "policy", None)
        if policy is not None and not policy.release_model:
            raise FederatedConfigError(
                f"worker {worker.id!r} keeps its model updates (DataAccessPolicy(release_model=False)), and "
                f"aggregation={aggregator!r} would receive them unmasked: pass FederatedStrategy("
                "secure_aggregation=True) (the server then sees only the sum), or give that worker a policy with "
                "release_model=True."
            )


def releases_scalars(worker: Any) -> bool:
    """Whether ``worker``'s losses may leave it as metrics."""
    policy = getattr(worker, "policy", None)
    return policy is None or policy.release_scalars


def audit(worker: Any, kind: str, command: str, rule: str, shape: tuple[int, ...] | None = None) -> None:
    """Record in ``worker``'s audit log that a ``kind`` ("update", "scalar") left it by ``command`` under ``rule``. A
    remote site audits its own releases (its log lives at the site): nothing is recorded, or fetched, here."""
    if getattr(worker, "remote", False):
        return
    log = getattr(worker, "audit_log", None)
    if log is not None:
        log.note(worker.id, kind, command, rule, shape)
