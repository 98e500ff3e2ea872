"""The audit trail of a worker's data-access policy: what was asked for, what left, and why.

:class:`ReleaseRequest` describes one request to take an object out of a worker (what the policy decides on and its
``allow`` callback sees); :class:`AuditRecord` is a request with its outcome, a sequence number and a timestamp;
:class:`AuditLog` keeps a worker's records (releases) and refusals.

Example:
    >>> request = ReleaseRequest("clinic", 7, "scalar", (), "float32", "get", None, private=True)
    >>> log = AuditLog()
    >>> log.records.append(record(request, "release_scalars"))
    >>> [(r.obj_id, r.kind, r.command, r.rule) for r in log], log
    ([(7, 'scalar', 'get', 'release_scalars')], AuditLog(1 released, 0 refused))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

_seq = itertools.count()


@dataclass(frozen=True)
class ReleaseRequest:
    """A request to take an object out of a worker, as the policy's ``allow`` callback sees it."""

    worker_id: Hashable
    obj_id: int
    kind: str  # "data", "scalar", "parameter", "update", "tensor"; "shape" or "value" for a command's result
    shape: tuple[int, ...] | None
    dtype: str | None
    command: str  # "get", "to_here" or "move"; the command's name for a "shape" or "value" request
    destination: Hashable | None  # the worker a move goes to; None: whoever sent the request (the pointer's owner)
    private: bool


@dataclass(frozen=True)
class AuditRecord:
    """One object that left a worker (or, in ``AuditLog.refused``, was refused); ``rule`` says why it could."""

    seq: int
    timestamp: float  # time.time()
    worker_id: Hashable
    obj_id: int
    kind: str
    shape: tuple[int, ...] | None
    dtype: str | None
    command: str
    destination: Hashable | None
    private: bool
    rule: str  # "public", "release_model", "release_scalars", "release_data", "release_shapes", "allow"; or why refused


class AuditLog:
    """The releases of one worker, oldest first (iterate over it, index it), and its refused requests.

    Example:
        >>> log = AuditLog()
        >>> len(log), list(log), log.refused
        (0, [], [])
    """

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self.refused: list[AuditRecord] = []

    def __iter__(self) -> Iterator[AuditRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> AuditRecord:
        return self.records[index]

    def filter(self, **fields: Any) -> list[AuditRecord]:
        """The records whose fields equal the given values, e.g. ``log.filter(command="move")``."""
        return [r for r in self.records if all(getattr(r, k) == v for k, v in fields.items())]

    def note(self, worker_id: Hashable, kind: str, command: str, rule: str, shape: tuple[int, ...] | None = None,
             destination: Hashable | None = "server") -> None:  # fmt: skip
        """Record that a ``kind`` ("update", "scalar") left worker ``worker_id`` by ``command`` under ``rule``, outside
        a pointer's request (federated training's updates and logged losses).

        Example:
            >>> log = AuditLog(); log.note("w", "update", "aggregate", "release_model", (3,))
            >>> [(r.kind, r.rule, r.destination) for r in log]
            [('update', 'release_model', 'server')]
        """
        request = ReleaseRequest(worker_id, 0, kind, shape, None, command, destination, private=kind == "scalar")
        self.records.append(record(request, rule))

    def clear(self) -> None:
        self.records.clear()
        self.refused.clear()

    def __repr__(self) -> str:
        return f"AuditLog({len(self.records)} released, {len(self.refused)} refused)"


def record(request: ReleaseRequest, rule: str) -> AuditRecord:
    """The audit record of ``request``, stamped now; ``rule`` says why it was released (or refused)."""
    return AuditRecord(
        seq=next(_seq),
        timestamp=time.time(),
        worker_id=request.worker_id,
        obj_id=request.obj_id,
        kind=request.kind,
        shape=request.shape,
        dtype=request.dtype,
        command=request.command,
        destination=request.destination,
        private=request.private,
        rule=rule,
    )
