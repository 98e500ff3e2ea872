"""``Collective``: how the parts of a round reach the other processes when workers train in several processes.

With ``Trainer(strategy=FederatedStrategy(), devices=N, num_nodes=M)`` every process trains its share of the
workers (see :mod:`lightning_fed.backends.distributed`); at the end of a round each aggregator combines what its
process accumulated with what the others did (:meth:`~lightning_fed.aggregation.Aggregator.sync_round`) through this
object: sums of tensors (``all_reduce``), lists of small Python objects (``all_gather_object``), all over the default
``torch.distributed`` process group that Lightning set up. Nothing here opens a connection of its own.

It also knows which process trains which worker (``owners``), so that the parts of a protocol that belong to a worker
(its secure-aggregation secrets, its differential-privacy noise) stay in that worker's process.

In one process (no process group) every call returns its input: aggregators can call it unconditionally.

Example:
    >>> import torch
    >>> one = Collective(owners={"a": 0, "b": 0})
    >>> one.rank, one.world_size, one.is_local("b")
    (0, 1, True)
    >>> one.all_reduce_sum([torch.tensor([1.0, 2.0]), torch.tensor([3])])
    [tensor([1., 2.]), tensor([3])]
    >>> one.all_gather_object({"steps": 3})
    [{'steps': 3}]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


class Collective:
    """Collectives over the default ``torch.distributed`` process group (see the module docstring).

    Args:
        device: where tensors travel: the process's own CUDA device for NCCL, the CPU for Gloo.
        owners: the process (global rank) that trains each worker, by worker id.
    """

    def __init__(self, device: torch.device | str = "cpu", owners: Mapping[Hashable, int] | None = None) -> None:
        self.device = torch.device(device)
        self.owners: dict[Hashable, int] = dict(owners or {})

    @property
    def rank(self) -> int:
        return dist.get_rank() if _initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if _initialized() else 1

    def is_local(self, worker_id: Hashable) -> bool:
        """Whether ``worker_id`` trains in this process (every worker does when ``owners`` does not name it)."""
        return self.owners.get(worker_id, self.rank) == self.rank

    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The element-wise sums of ``tensors`` over every process, in one ``all_reduce`` per kind.

        Floating and complex tensors travel in float64 (complex as real pairs), integer and bool ones in int64; each
        result comes back in its tensor's dtype and device. Every process must pass tensors of the same shapes.
        """
        if self.world_size == 1 or not tensors:
            return list(tensors)
        out: list[Tensor | None] = [None] * len(tensors)
        is_float = [t.dtype.is_floating_point or t.dtype.is_complex for t in tensors]
        floats = [i for i, f in enumerate(is_float) if f]
        ints = [i for i, f in enumerate(is_float) if not f]
        for positions, dtype in ((floats, torch.float64), (ints, torch.int64)):
            if not positions:
                continue
            parts = []
            for i in positions:
                t = tensors[i].detach()
                t = torch.view_as_real(t.to(torch.complex128)) if t.dtype.is_complex else t
                parts.append(t.reshape(-1).to(self.device, dtype))
            flat = torch.cat(parts)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            start = 0
            for i in positions:
                t = tensors[i]
                n = t.numel() * (2 if t.dtype.is_complex else 1)
                piece = flat[start : start + n]
                start += n
                if t.dtype.is_complex:
                    piece = torch.view_as_complex(piece.reshape(*t.shape, 2))
                out[i] = piece.reshape(t.shape).to(t.device, t.dtype)
        return [t for t in out if t is not None]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every process, by rank (each must be picklable)."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def __repr__(self) -> str:
        return f"Collective(rank={self.rank}, world_size={self.world_size}, device={self.device})"
