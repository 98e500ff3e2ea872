"""The data-access guard's cost on pointer commands: ``x + y`` on 10-element tensors at a VirtualWorker, 2000 times,
under the strict (default) and the open policy, on public inputs (sent by the owner) and on private ones (labelled as
the worker's data), against a worker with its guard removed (the cost of the pointer machinery alone).

Run: ``OMP_NUM_THREADS=1 python benchmarks/policy_commands.py [--repeats 5] [--commands 2000]``; it prints the best
time per command (microseconds) of each configuration over the repeats, and the ratio to the unguarded worker.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import lightning_fed as sy
from lightning_fed.privacy.labels import PRIVATE
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.messages import ObjectMessage
from lightning_fed.workers.store import new_object_id


def pointer(worker: VirtualWorker, tensor: torch.Tensor, labels: int) -> torch.Tensor:
    if not labels:
        return sy.send(tensor, worker)
    from lightning_fed.pointers.pointer_tensor import PointerTensor

    obj_id = new_object_id()
    me._send(ObjectMessage(obj_id, tensor.clone(), labels), worker)
    return PointerTensor._make(worker, obj_id, tensor.shape, tensor.dtype, tensor.device, me)


def time_commands(policy: str | None, labels: int, commands: int, repeats: int) -> float:
    worker = VirtualWorker(id=f"bench-{policy}-{labels}", policy=policy or "strict")
    if policy is None:
        worker._guard = None  # the pointer machinery alone, for reference
    x, y = pointer(worker, torch.randn(10), labels), pointer(worker, torch.randn(10), labels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(commands):
            x + y
        best = min(best, time.perf_counter() - start)
    return best / commands * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # the open policy's one warning
    torch.set_num_threads(1)
    base = time_commands(None, 0, args.commands, args.repeats)
    print(f"{'configuration':<28}{'us/command':>12}{'ratio':>8}")
    print(f"{'no guard (reference)':<28}{base:>12.2f}{1.0:>8.3f}")
    for policy in ("strict", "open"):
        for labels, what in ((0, "public"), (PRIVATE, "private")):
            us = time_commands(policy, labels, args.commands, args.repeats)
            print(f"{policy + ', ' + what + ' inputs':<28}{us:>12.2f}{us / base:>8.3f}")


if __name__ == "__main__":
    main()
